// Finds the line of a field path (["method", "loss"]) in block-style YAML text, so that a
// problem reported by the API can be shown on the line that holds the field. Not a YAML
// parser: it follows indentation of `key:` lines, which is how people write specs; for a field
// inside a flow mapping ({a: 1}) or a list item it answers the deepest enclosing key's line.

const KEY_LINE = /^(\s*)((?:-\s+)*)(["']?)([^\s:#"'][^:#"']*?)\3\s*:(?:\s|$)/;

/**
 * 1-based line of the deepest key on `loc`'s path, and whether it is the field itself. A loc
 * with a leading tag the text does not have (a union's branch name, say) is tried without it.
 */
export function lineOfPath(text, loc) {
  const wanted = loc.filter((part) => typeof part === "string");
  const whole = deepestKeyLine(text, wanted);
  for (let start = 1; !whole.exact && start < wanted.length; start += 1) {
    const rest = deepestKeyLine(text, wanted.slice(start));
    if (rest.exact) return rest;
  }
  return whole;
}

function deepestKeyLine(text, wanted) {
  if (!wanted.length) return { line: null, exact: false };
  const stack = [];
  let best = { line: null, depth: 0, exact: false };
  text.split(/\r?\n/).forEach((raw, index) => {
    const match = KEY_LINE.exec(raw);
    if (!match) return;
    const indent = match[1].length + match[2].length;
    while (stack.length && stack[stack.length - 1].indent >= indent) stack.pop();
    stack.push({ indent, key: match[4].trim() });
    const path = stack.map((entry) => entry.key);
    if (path.length > wanted.length) return;
    if (!path.every((key, i) => key === wanted[i])) return;
    if (path.length > best.depth) best = { line: index + 1, depth: path.length, exact: path.length === wanted.length };
  });
  return { line: best.line, exact: best.exact };
}
