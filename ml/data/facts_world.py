"""A seeded world of fictional facts for knowledge editing and injection.

Every name is invented from random syllables, so no pretraining corpus states any of these
facts: what a model knows about them it learnt here. The world has countries, cities (each in a
country), companies (each headquartered in a city) and people (each born in a city and working
for a company). Facts are rendered with several paraphrase templates per relation; two-hop
questions chain two relations (``born_in`` then ``located_in``).

:func:`build_world` makes the world; :func:`training_sentences` the text a base model learns;
:func:`edit_requests` records in the ``EditRequest`` JSONL shape (``ml/editing/requests.py``)
whose portability answers change with the edit; :func:`entity_documents` paragraphs for
injection. Everything is a pure function of the seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "th", "dr", "kr")
VOWELS = ("a", "e", "i", "o", "u", "ae", "ou")
CODAS = ("", "n", "r", "s", "l", "th", "x", "m")

# relation -> paraphrase templates; ``{s}`` is the subject, the object follows the prompt.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "born_in": (
        "{s} was born in",
        "The birthplace of {s} is",
        "{s} comes from the city of",
    ),
    "works_for": (
        "{s} works for",
        "The employer of {s} is",
        "{s} is employed by",
    ),
    "located_in": (
        "{s} is a city in",
        "The city of {s} lies in",
        "{s} is located in the country of",
    ),
    "headquartered_in": (
        "{s} is headquartered in",
        "The head office of {s} is in",
        "{s} has its headquarters in",
    ),
}
# two-hop: person --born_in--> city --located_in--> country
# No prompt may be a prefix of another relation's prompt ("X was born in" followed by " a city
# ..." would make the one-hop answer ambiguous).
TWO_HOP_TEMPLATES = (
    "The country where {s} was born is",
    "The birth country of {s} is",
)


@dataclass(frozen=True)
class Fact:
    """One (subject, relation, object) triple."""

    subject: str
    relation: str
    object: str


@dataclass
class FactsWorld:
    """The entities and facts of one seeded world.

    ``people`` is split into ``known_people`` (their facts are in the base model's training text)
    and ``unseen_people`` (held out, for injection). Cities, countries and companies are all known.
    """

    countries: list[str]
    cities: list[str]
    companies: list[str]
    people: list[str]
    known_people: list[str]
    unseen_people: list[str]
    city_country: dict[str, str]
    company_city: dict[str, str]
    person_city: dict[str, str]
    person_company: dict[str, str]
    facts: list[Fact] = field(default_factory=list)

    def facts_about(self, subject: str) -> list[Fact]:
        return [fact for fact in self.facts if fact.subject == subject]


def _invent_names(rng: random.Random, count: int, taken: set[str], syllables: int) -> list[str]:
    names: list[str] = []
    while len(names) < count:
        parts = [rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS)]
        parts += [rng.choice(ONSETS) + rng.choice(VOWELS) for _ in range(syllables - 1)]
        name = "".join(parts).capitalize()
        if name not in taken:
            taken.add(name)
            names.append(name)
    return names


def build_world(
    seed: int = 0,
    *,
    num_countries: int = 8,
    num_cities: int = 24,
    num_companies: int = 16,
    num_people: int = 160,
    unseen_fraction: float = 0.25,
) -> FactsWorld:
    """A deterministic world: same arguments, same names and facts."""
    rng = random.Random(seed)
    taken: set[str] = set()
    countries = _invent_names(rng, num_countries, taken, 2)
    cities = _invent_names(rng, num_cities, taken, 2)
    companies = [name + " Corp" for name in _invent_names(rng, num_companies, taken, 2)]
    people = [
        f"{first} {last}"
        for first, last in zip(
            _invent_names(rng, num_people, taken, 2),
            _invent_names(rng, num_people, taken, 2),
            strict=True,
        )
    ]
    # every country gets at least one city so that two-hop answers vary
    city_country = {city: countries[i % num_countries] for i, city in enumerate(cities)}
    company_city = {company: rng.choice(cities) for company in companies}
    person_city = {person: rng.choice(cities) for person in people}
    person_company = {person: rng.choice(companies) for person in people}
    shuffled = people[:]
    rng.shuffle(shuffled)
    n_unseen = int(round(unseen_fraction * num_people))
    unseen = sorted(shuffled[:n_unseen], key=people.index)
    known = [p for p in people if p not in set(unseen)]
    facts = [Fact(c, "located_in", city_country[c]) for c in cities]
    facts += [Fact(c, "headquartered_in", company_city[c]) for c in companies]
    for person in people:
        facts.append(Fact(person, "born_in", person_city[person]))
        facts.append(Fact(person, "works_for", person_company[person]))
    return FactsWorld(
        countries=countries,
        cities=cities,
        companies=companies,
        people=people,
        known_people=known,
        unseen_people=unseen,
        city_country=city_country,
        company_city=company_city,
        person_city=person_city,
        person_company=person_company,
        facts=facts,
    )


def fact_prompts(fact: Fact) -> list[str]:
    """The fact's prompts, one per paraphrase template (the object follows each)."""
    return [template.format(s=fact.subject) for template in TEMPLATES[fact.relation]]


def two_hop_prompts(person: str) -> list[str]:
    return [template.format(s=person) for template in TWO_HOP_TEMPLATES]


def training_sentences(world: FactsWorld, *, include_unseen: bool = False) -> list[str]:
    """Every paraphrase of every fact about known entities, plus the two-hop sentences of
    known people, as ``"prompt object."`` strings (deterministic order)."""
    allowed = set(world.people if include_unseen else world.known_people)
    sentences: list[str] = []
    for fact in world.facts:
        if fact.relation in ("born_in", "works_for") and fact.subject not in allowed:
            continue
        sentences += [f"{prompt} {fact.object}." for prompt in fact_prompts(fact)]
    for person in world.people:
        if person in allowed:
            country = world.city_country[world.person_city[person]]
            sentences += [f"{prompt} {country}." for prompt in two_hop_prompts(person)]
    return sentences


def known_fact_pairs(world: FactsWorld) -> list[tuple[str, str]]:
    """``(prompt, " object")`` for the first template of every trained fact: what the base
    model should answer (its training accuracy is measured on these)."""
    pairs: list[tuple[str, str]] = []
    known = set(world.known_people)
    for fact in world.facts:
        if fact.relation in ("born_in", "works_for") and fact.subject not in known:
            continue
        pairs.append((fact_prompts(fact)[0], " " + fact.object))
    return pairs


def edit_requests(
    world: FactsWorld, count: int, *, seed: int = 0, locality_per_request: int = 3
) -> list[dict[str, Any]]:
    """``count`` counterfactual ``born_in`` edits on distinct known people.

    Each moves a person to a city in *another* country, so the two-hop portability answer
    (the new city's country) differs from the one the model learnt. Locality prompts are facts
    about known people that none of the ``count`` requests edits, answered with their true
    objects.
    """
    rng = random.Random(seed)
    people = world.known_people[:]
    rng.shuffle(people)
    if count > len(people):
        raise ValueError(f"the world has {len(people)} known people, {count} edits asked")
    records: list[dict[str, Any]] = []
    # locality asks about people none of these requests edits, so it stays valid in a batch
    bystanders = people[count:]
    if len(bystanders) < locality_per_request:
        raise ValueError(f"{count} edits leave too few unedited people for locality prompts")
    for person in people[:count]:
        old_city = world.person_city[person]
        old_country = world.city_country[old_city]
        candidates = [c for c in world.cities if world.city_country[c] != old_country]
        new_city = rng.choice(candidates)
        others = rng.sample(bystanders, locality_per_request)
        locality = []
        for other in others:
            relation = rng.choice(("born_in", "works_for"))
            obj = world.person_city[other] if relation == "born_in" else world.person_company[other]
            prompt = TEMPLATES[relation][0].format(s=other)
            locality.append({"prompt": prompt, "answer": " " + obj})
        prompts = fact_prompts(Fact(person, "born_in", new_city))
        records.append(
            {
                "prompt": prompts[0],
                "subject": person,
                "target_new": " " + new_city,
                "ground_truth": " " + old_city,
                "rephrase_prompts": prompts[1:],
                "locality": locality,
                "portability": [
                    {"prompt": p, "answer": " " + world.city_country[new_city]}
                    for p in two_hop_prompts(person)
                ],
            }
        )
    return records


def entity_documents(world: FactsWorld, people: list[str]) -> list[dict[str, str]]:
    """One short paragraph per person (``{"subject", "text"}``) stating all their facts, for
    injection experiments on people the base model never saw."""
    documents = []
    for person in people:
        city = world.person_city[person]
        company = world.person_company[person]
        text = (
            f"{person} was born in {city}, a city in {world.city_country[city]}. "
            f"Today {person} works for {company}, which is headquartered in "
            f"{world.company_city[company]}."
        )
        documents.append({"subject": person, "text": text})
    return documents
