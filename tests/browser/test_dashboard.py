"""The dashboard in real headless Chromium against a real `distill serve`: sign in, create a job
from the YAML form (a broken spec first), watch its loss curve grow over the live stream, cancel
a running job from its page, compare two jobs, read the lineage of the model a job made."""

from __future__ import annotations

import re

from tests.browser.conftest import TERMINAL, Browser
from tests.support.stack import wait_until


def plotted_points(browser: Browser, chart: str) -> int:
    """Points drawn in the chart's train/loss curve (0 while it has none)."""
    path = browser.page.query_selector(f'{chart} path.series[data-series="train/loss"]')
    return int(path.get_attribute("data-points")) if path else 0


def test_sign_in_refuses_a_wrong_key_then_signs_in_and_out(browser: Browser) -> None:
    page = browser.page
    browser.open()
    page.fill("#api-key", "dk_not-a-key")
    page.click("#sign-in")
    page.wait_for_selector("#sign-in-error:has-text('not valid')")
    assert page.evaluate("sessionStorage.length") == 0

    browser.sign_in()
    assert page.inner_text("#project-name").strip()
    page.wait_for_selector("#jobs-table")
    assert page.evaluate("sessionStorage.length") == 1

    page.click("#sign-out")
    page.wait_for_selector("#sign-in-form")
    assert page.evaluate("sessionStorage.length") == 0
    assert page.is_hidden("#nav")


def test_new_job_form_shows_problems_on_fields_then_creates_a_job_whose_curve_grows(
    browser: Browser,
) -> None:
    page, served = browser.page, browser.served
    browser.sign_in()
    page.click("a[data-nav='new']")
    # (wait_for_function would evaluate a string: the page's CSP refuses that, as it should)
    starter = wait_until(lambda: "kind: distill" in (v := page.input_value("#spec-yaml")) and v,
                         timeout=30, what="the starter spec")  # fmt: skip
    # The starter spec names this project's teacher and dataset.
    assert served.teacher_id in starter and served.dataset_id in starter

    broken = starter.replace("loss: fkl", "loss: fkl_typo")
    broken = re.sub(r"max_steps: \d+", "max_steps: 240", broken)
    broken = re.sub(r"batch_size: \d+", "batch_size: 4", broken)
    broken = re.sub(r"eval_every: \d+", "eval_every: 80", broken)
    page.fill("#spec-yaml", broken)
    page.click("#spec-validate")
    problem = page.wait_for_selector("#spec-problems li[data-loc='method.loss']")
    assert "fkl_typo" in problem.inner_text() or "loss" in problem.inner_text()
    loss_line = broken.splitlines().index(next(ln for ln in broken.splitlines()
                                              if "loss: fkl_typo" in ln)) + 1  # fmt: skip
    assert problem.get_attribute("data-line") == str(loss_line)
    marked = page.query_selector_all("#spec-gutter .has-problem")
    assert [m.get_attribute("data-line") for m in marked] == [str(loss_line)]
    browser.screenshot("new-job-problem")

    # Create with another mistake: the 422 problem+json is shown on its line; no job is made.
    jobs_before = len(served.api.call("GET", "/v1/jobs")["items"])
    wrong_batch = broken.replace("fkl_typo", "fkl").replace("batch_size: 4", "batch_size: many")
    page.fill("#spec-yaml", wrong_batch)
    page.click("#spec-create")
    problem = page.wait_for_selector("#spec-problems li[data-loc$='training.batch_size']")
    batch_line = wrong_batch.splitlines().index("  batch_size: many") + 1
    assert problem.get_attribute("data-line") == str(batch_line)
    assert "#/new" in page.url
    assert len(served.api.call("GET", "/v1/jobs")["items"]) == jobs_before

    page.fill("#spec-yaml", broken.replace("fkl_typo", "fkl"))
    page.click("#spec-validate")
    page.wait_for_selector("#spec-verdict.ok")
    assert page.query_selector_all("#spec-problems li") == []

    page.click("#spec-create")
    page.wait_for_url(re.compile(r"#/jobs/job_"))
    job_id = page.url.rsplit("/", 1)[-1]
    page.wait_for_selector("#transport:text-is('stream')")  # live over SSE, not polling
    assert served.api.job(job_id)["spec"]["training"]["max_steps"] == 240

    # The curve grows while the job runs: more plotted points later than earlier.
    first = wait_until(lambda: plotted_points(browser, "#loss-chart"), timeout=120,
                       what="the first loss points")  # fmt: skip
    wait_until(lambda: plotted_points(browser, "#loss-chart") > first, timeout=120,
               what="the loss curve to grow")  # fmt: skip
    browser.screenshot("job-running")
    page.wait_for_selector("#job-stats")
    page.wait_for_selector(".head-actions [data-status='succeeded']", timeout=180_000)
    assert plotted_points(browser, "#loss-chart") == 240
    page.wait_for_selector("#produced-model a")
    page.wait_for_selector("#result-table")
    page.wait_for_selector("#checkpoint-rows tr td:text-is('200')")
    page.wait_for_selector("#eval-chart path.series")
    assert page.inner_text("#eta") == "done"
    browser.screenshot("job-succeeded")


def test_cancel_a_running_job_from_its_page(browser: Browser) -> None:
    page, served = browser.page, browser.served
    job_id = served.api.create_job(served.spec(name="long-run", max_steps=100_000,
                                               checkpoint_every=0))  # fmt: skip
    served.api.wait_status(job_id, ("running",), timeout=180)
    # As on a server without the stream route: the page falls back to polling the REST lists.
    page.route("**/v1/jobs/*/stream", lambda route: route.fulfill(status=404, body="{}"))
    browser.sign_in()
    browser.open(f"#/jobs/{job_id}")
    page.wait_for_selector(".head-actions [data-status='running']")
    page.wait_for_selector("#transport:text-is('polling')")
    first = wait_until(lambda: plotted_points(browser, "#loss-chart"), timeout=120,
                       what="the running job's first loss points")  # fmt: skip
    wait_until(lambda: plotted_points(browser, "#loss-chart") > first, timeout=120,
               what="the polled curve to grow")  # fmt: skip
    page.click("#cancel-job")  # the confirm() dialog is accepted by the fixture
    page.wait_for_selector(".head-actions [data-status='cancelled']", timeout=120_000)
    assert page.is_disabled("#cancel-job")
    assert served.api.job(job_id)["status"] == "cancelled"
    page.wait_for_selector("#events-rows td:text-is('stop requested')")
    browser.screenshot("job-cancelled")


def test_compare_overlays_two_jobs_and_models_show_their_lineage(browser: Browser) -> None:
    page, served = browser.page, browser.served
    jobs = {loss: served.api.create_job(served.spec(name=f"cmp-{loss}", loss=loss))
            for loss in ("fkl", "rkl")}  # fmt: skip
    done = {loss: served.api.wait_status(job, TERMINAL, timeout=300) for loss, job in jobs.items()}
    assert {j["status"] for j in done.values()} == {"succeeded"}, done

    browser.sign_in()
    page.wait_for_selector(f"#jobs-rows tr[data-job-id='{jobs['fkl']}']")
    for job_id in jobs.values():
        page.check(f"#jobs-rows tr[data-job-id='{job_id}'] input.pick")
    page.click("#compare-selected")
    page.wait_for_selector("#compare-chart path.series")
    curves = page.query_selector_all("#compare-chart path.series")
    assert len(curves) == 2
    assert {c.get_attribute("data-points") for c in curves} == {"20"}
    assert len({c.get_attribute("stroke") for c in curves}) == 2  # one colour per job
    legend = page.inner_text("#compare-chart .legend")
    assert "cmp-fkl" in legend and "cmp-rkl" in legend
    assert len(page.query_selector_all("#compare-rows tr")) == 2
    browser.screenshot("compare")

    page.select_option("#compare-metric", "eval/loss")
    page.wait_for_url(re.compile(r"metric=eval%2Floss"))
    page.wait_for_selector("#compare-chart figcaption:has-text('eval/loss')")

    model_id = done["rkl"]["output_model_id"]
    page.click("a[data-nav='models']")
    row = page.wait_for_selector(f"#model-rows tr[data-model-id='{model_id}']")
    lineage = row.inner_text()
    assert jobs["rkl"] in lineage and served.teacher_id in lineage
    assert served.dataset_name in lineage  # the dataset hash, named
    browser.screenshot("models")
    page.click(f"#model-rows tr[data-model-id='{model_id}'] a")
    page.wait_for_selector("#model-lineage")
    assert "rkl" in page.inner_text("#model-lineage")
    page.click("a[data-nav='datasets']")
    ds_row = page.wait_for_selector(f"#dataset-rows tr[data-dataset-id='{served.dataset_id}']")
    assert "200" in ds_row.inner_text()  # rows
    browser.screenshot("datasets")


def test_jobs_list_filters_searches_and_renders_names_as_text(browser: Browser) -> None:
    page, served = browser.page, browser.served
    hostile = '<img src=x id=injected onerror="window.__pwned=1">'
    job_id, *_ = made = [served.api.create_job(served.spec(name=name, max_steps=100_000))
                         for name in (hostile, "filler-1", "filler-2")]  # fmt: skip
    for made_id in made:  # cancelled while queued (or between steps): nothing left running
        served.api.call("POST", f"/v1/jobs/{made_id}/cancel")
        served.api.wait_status(made_id, ("cancelled",), timeout=120)

    browser.sign_in()
    link = page.wait_for_selector(f"#jobs-rows tr[data-job-id='{job_id}'] a.job-link")
    assert link.inner_text() == hostile  # shown as text, not parsed
    assert page.query_selector("#injected") is None
    assert page.evaluate("window.__pwned") is None

    ids = lambda: [r.get_attribute("data-job-id")  # noqa: E731
                   for r in page.query_selector_all("#jobs-rows tr[data-job-id]")]  # fmt: skip
    cancelled = [j["id"] for j in served.api.call("GET", "/v1/jobs?status=cancelled")["items"]]
    assert set(made) <= set(cancelled)
    page.select_option("#filter-status", "cancelled")
    wait_until(lambda: ids() == cancelled, timeout=30, what="exactly the cancelled jobs")
    page.select_option("#filter-status", "")
    page.fill("#filter-q", "img src")
    wait_until(lambda: ids() == [job_id], timeout=30, what="the search to keep one job")
    browser.screenshot("jobs-list")

    # Pages of two through the API cursor: the second page holds other jobs, and back again.
    browser.open("#/jobs?limit=2")
    first_page = wait_until(lambda: len(ids()) == 2 and ids(), timeout=30, what="page 1")
    page.click("#page-next")
    second_page = wait_until(lambda: (now := ids()) != first_page and now, timeout=30,
                             what="page 2")  # fmt: skip
    assert not set(first_page) & set(second_page)
    page.click("#page-prev")
    wait_until(lambda: ids() == first_page, timeout=30, what="page 1 again")

    # The list refreshes itself: a job made elsewhere shows up with no click.
    newer = served.api.create_job(served.spec(name="made-elsewhere", max_steps=100_000))
    served.api.call("POST", f"/v1/jobs/{newer}/cancel")
    wait_until(lambda: newer in ids(), timeout=30, what="the auto-refresh to show the new job")
    served.api.wait_status(newer, ("cancelled",), timeout=120)


def test_page_modules_parse_sse_chunks_and_find_yaml_lines(browser: Browser) -> None:
    """The SSE parser and the YAML line finder, run as the page runs them (real Chromium)."""
    browser.sign_in()
    got = browser.page.evaluate(
        r"""async () => {
          const { SseParser } = await import("/ui/js/sse.js");
          const { lineOfPath } = await import("/ui/js/yaml_paths.js");
          const seen = [];
          const parser = new SseParser((m) => seen.push(m));
          // A message split across chunks (a CRLF too), a comment, a two-line data field.
          const chunks = ["event: met", "ric\r\nid: 7-3\r\ndata: {\"k\":", "1}\r", "\n\r\n",
                          ": keep-alive\n\n", "data: a\ndata: b\n\nevent: end\ndata: {}\n\n"];
          for (const chunk of chunks) parser.push(chunk);
          const spec = "kind: distill\nmethod:\n  loss: fkl\n  params: {temperature: 1.0}\n";
          return {
            seen,
            loss: lineOfPath(spec, ["method", "loss"]),
            param: lineOfPath(spec, ["method", "params", "temperature"]),
            tagged: lineOfPath(spec, ["distill", "method", "loss"]),
            missing: lineOfPath(spec, ["dataset", "train"]),
          };
        }"""
    )
    assert got["seen"] == [
        {"event": "metric", "data": '{"k":1}', "id": "7-3"},
        {"event": "message", "data": "a\nb", "id": "7-3"},
        {"event": "end", "data": "{}", "id": "7-3"},
    ]
    assert got["loss"] == {"line": 3, "exact": True}
    assert got["param"] == {"line": 4, "exact": False}  # inside a flow mapping: its key's line
    assert got["tagged"] == {"line": 3, "exact": True}
    assert got["missing"] == {"line": None, "exact": False}
