import { expect, test } from "@playwright/test";
import { fill, navigate, signIn, signOut, unique, users } from "./helpers";

test("an editor declares a stream, a sink and a route, edits the route and reviews the change", async ({ page }) => {
  const stream = unique("plays");
  const sink = unique("search");
  const route = unique("br-plays");

  await signIn(page, users.editor);

  await navigate(page, "Streams");
  await page.getByRole("link", { name: "New stream" }).first().click();
  await fill(page, { Name: stream, Partitions: "4", "Reason for this change": "first stream" });
  await page.getByRole("button", { name: "Save stream" }).click();
  await expect(page).toHaveURL(new RegExp(`/streams/alpha/${stream}$`));
  await expect(page.getByTestId("spec")).toContainText("partitions");

  await page.goto("/sinks/new");
  await fill(page, { Name: sink, URL: "https://search.internal/bulk", "Authorization header (secret)": "Bearer s3cr3t-value" });
  await page.getByRole("button", { name: "Save sink" }).click();
  await expect(page).toHaveURL(new RegExp(`/sinks/alpha/${sink}$`));
  await expect(page.locator("body")).not.toContainText("s3cr3t-value");

  await page.goto("/routes/new");
  await fill(page, {
    Name: route,
    "Source stream": stream,
    Sink: sink,
    "Filter (CEL)": 'event.country == "BR"',
    "Batch size": "100",
  });
  await page.getByRole("button", { name: "Save route" }).click();
  await expect(page).toHaveURL(new RegExp(`/routes/alpha/${route}$`));

  // Edit: a second revision, and the diff between the two shows exactly what changed.
  await page.getByRole("link", { name: "Edit" }).click();
  await fill(page, { "Batch size": "250", "Reason for this change": "bigger batches" });
  await page.getByRole("button", { name: "Save route" }).click();
  await expect(page).toHaveURL(new RegExp(`/routes/alpha/${route}$`));
  await expect(page.getByText("Changes from v1 to v2")).toBeVisible();
  const diff = page.getByTestId("diff");
  await expect(diff).toContainText("batch_size");
  await expect(diff).toContainText("100");
  await expect(diff).toContainText("250");
  await expect(page.getByTestId("history")).toContainText("bigger batches");
  await page.screenshot({ path: "test-results/route-diff.png", fullPage: true });

  // The audit log has the change, attributed to the editor.
  await navigate(page, "Audit log");
  await page.getByLabel("Author").fill(users.editor.name);
  await page.getByRole("button", { name: "Filter" }).click();
  const row = page.getByTestId("audit-table").locator("tr", { hasText: `route alpha/${route}` }).first();
  await expect(row).toContainText("v2");
  await expect(row).toContainText("bigger batches");

  await signOut(page);
  await page.goto("/streams");
  await expect(page).toHaveURL(/\/login$/);
});

test("field errors appear next to the field and nothing is saved", async ({ page }) => {
  const name = unique("bad");
  await signIn(page, users.editor);
  await page.goto("/streams/new");
  await fill(page, { Name: name, Partitions: "0", "JSON Schema": '{"type": "nonsense"}' });
  await page.getByRole("button", { name: "Save stream" }).click();
  await expect(page.getByTestId("error-partitions")).toContainText("between 1 and 256");
  await page.goto("/streams");
  await expect(page.locator("body")).not.toContainText(name);
});

test("a viewer can read but not change", async ({ page }) => {
  const stream = unique("watched");
  await signIn(page, users.editor);
  await page.goto("/streams/new");
  await fill(page, { Name: stream, Partitions: "1" });
  await page.getByRole("button", { name: "Save stream" }).click();
  await expect(page).toHaveURL(new RegExp(`/streams/alpha/${stream}$`));
  await signOut(page);

  await signIn(page, users.viewer);
  await navigate(page, "Streams");
  await expect(page.getByRole("link", { name: stream })).toBeVisible();
  await expect(page.getByRole("link", { name: "New stream" })).toHaveCount(0);
  await page.getByRole("link", { name: stream }).click();
  await expect(page.getByTestId("spec")).toContainText("partitions");
  await expect(page.getByRole("link", { name: "Edit" })).toHaveCount(0);
  await expect(page.getByRole("button", { name: "Delete" })).toHaveCount(0);
  // Even by opening the form directly, the server refuses the change.
  await page.goto(`/streams/alpha/${stream}/edit`);
  await fill(page, { Partitions: "8" });
  await page.getByRole("button", { name: "Save stream" }).click();
  await expect(page.getByRole("alert")).toContainText("Your role does not allow this.");
  await page.goto(`/streams/alpha/${stream}`);
  await expect(page.getByText("version 1")).toBeVisible();
});

test.describe("without JavaScript", () => {
  test.use({ javaScriptEnabled: false });

  test("sign in and create a stream with plain form posts", async ({ page }) => {
    const stream = unique("nojs");
    await page.goto("/login");
    await page.getByLabel("Username").fill(users.editor.name);
    await page.getByLabel("Password").fill(users.editor.password);
    await page.getByRole("button", { name: "Sign in" }).click();
    await expect(page.getByTestId("whoami")).toHaveText(users.editor.name);
    await page.goto("/streams/new");
    await fill(page, { Name: stream, Partitions: "2" });
    await page.getByRole("button", { name: "Save stream" }).click();
    await expect(page).toHaveURL(new RegExp(`/streams/alpha/${stream}$`));
    // An invalid post comes back to the form with the message beside the field.
    await page.goto("/streams/new");
    await fill(page, { Name: unique("nojs"), Partitions: "999" });
    await page.getByRole("button", { name: "Save stream" }).click();
    await expect(page.getByTestId("error-partitions")).toContainText("between 1 and 256");
  });
});

test("an API token created in the console is shown once and works against the JSON API", async ({ page }) => {
  const name = unique("bot");
  await signIn(page, users.editor);
  await navigate(page, "API tokens");
  await page.getByLabel("Name", { exact: true }).fill(name);
  await page.getByLabel("Role", { exact: true }).selectOption("editor");
  await page.getByRole("button", { name: "Create token" }).click();
  const token = (await page.getByTestId("new-token").textContent())!.trim();
  expect(token).toMatch(/^ks_[0-9a-f]{64}$/);

  const me = await page.request.get("/api/v1/me", { headers: { Authorization: `Bearer ${token}` } });
  expect(me.status()).toBe(200);
  expect(await me.json()).toMatchObject({ principal: `token:${name}`, role: "editor", teams: ["alpha"] });

  // Listed by prefix only; after a reload the token itself is gone for good.
  await page.reload();
  await expect(page.locator("tr", { hasText: name })).toContainText(token.slice(0, 10));
  await expect(page.locator("body")).not.toContainText(token);
  await page.locator("tr", { hasText: name }).getByRole("button", { name: "Revoke" }).click();
  await expect(page.locator("tr", { hasText: name })).toContainText("revoked");
  const after = await page.request.get("/api/v1/me", { headers: { Authorization: `Bearer ${token}` } });
  expect(after.status()).toBe(401);
});

test("a producer token from the stream page lets an application ingest events", async ({ page }) => {
  const stream = unique("clicks");
  await signIn(page, users.editor);
  await page.goto("/streams/new");
  await fill(page, { Name: stream, Partitions: "2" });
  await page.getByRole("button", { name: "Save stream" }).click();
  await expect(page).toHaveURL(new RegExp(`/streams/alpha/${stream}$`));

  await page.getByLabel("Token name").fill("web");
  await page.getByRole("button", { name: "Create producer token" }).click();
  const token = (await page.getByTestId("new-producer-token").textContent())!.trim();
  expect(token).toMatch(/^kp_[0-9a-f]{64}$/);

  const sent = await page.request.post(`/ingest/${stream}`, {
    headers: { Authorization: `Bearer ${token}` },
    data: [{ user: "u1", page: "/home" }, { user: "u2", page: "/play" }],
  });
  expect(sent.status()).toBe(200);
  expect((await sent.json()).accepted).toBe(2);

  const refused = await page.request.post(`/ingest/${stream}`, {
    headers: { Authorization: `Bearer ${token}` },
    data: [{ user: "u3" }, "not an object"],
  });
  expect(refused.status()).toBe(400);
  expect((await refused.json()).rejected).toEqual([{ index: 1, kind: "not_object", reason: expect.stringContaining("JSON object") }]);

  await page.getByTestId("producer-tokens").getByRole("button", { name: "Revoke" }).click();
  await expect(page.getByTestId("producer-tokens")).toContainText("revoked");
  const after = await page.request.post(`/ingest/${stream}`, { headers: { Authorization: `Bearer ${token}` }, data: { user: "u4" } });
  expect(after.status()).toBe(401);
});

test("a route declared in the console delivers ingested events, and its job page shows it", async ({ page }) => {
  const stream = unique("clicks");
  const sink = unique("files");
  const route = unique("br-clicks");
  await signIn(page, users.editor);

  await page.goto("/streams/new");
  await fill(page, { Name: stream, Partitions: "2" });
  await page.getByRole("button", { name: "Save stream" }).click();
  await expect(page).toHaveURL(new RegExp(`/streams/alpha/${stream}$`));
  await page.getByLabel("Token name").fill("browser-test");
  await page.getByRole("button", { name: "Create producer token" }).click();
  const token = (await page.getByTestId("new-producer-token").innerText()).match(/kp_[A-Za-z0-9_-]+/)![0];

  await page.goto("/sinks/new");
  await page.getByLabel("Kind", { exact: true }).selectOption("file");
  await fill(page, { Name: sink, Directory: `e2e/${sink}` });
  await page.getByRole("button", { name: "Save sink" }).click();
  await expect(page).toHaveURL(new RegExp(`/sinks/alpha/${sink}$`));

  await page.goto("/routes/new");
  await fill(page, {
    Name: route,
    "Source stream": stream,
    Sink: sink,
    "Filter (CEL)": 'event.country == "BR"',
    "Max latency (ms)": "50",
  });
  await page.getByRole("button", { name: "Save route" }).click();
  await expect(page).toHaveURL(new RegExp(`/routes/alpha/${route}$`));

  const events = Array.from({ length: 40 }, (_, n) => JSON.stringify({ n, country: n % 4 === 0 ? "BR" : "US" })).join("\n");
  const resp = await page.request.post(`/ingest/${stream}`, {
    headers: { authorization: `Bearer ${token}`, "content-type": "application/x-ndjson" },
    data: events,
  });
  expect(resp.status()).toBe(200);

  // The stream's page shows the traffic and the newest events.
  await page.goto(`/streams/alpha/${stream}`);
  await expect(page.getByTestId("log-events")).toHaveText("40");
  await expect(page.getByTestId("ingest-accepted")).toHaveText("40");
  await expect(page.getByTestId("recent-events").locator("tbody tr")).toHaveCount(10);
  await expect(page.getByTestId("stream-routes")).toContainText(route);
  await expect(page.getByTestId("ingest-producers")).toHaveText("1");
  await expect(page.getByTestId("chart-ingest").locator("svg")).toContainText("accepted");
  await page.goto(`/routes/alpha/${route}`);

  // The job section fills in as the reconciler starts the job and it delivers.
  await expect(async () => {
    await page.reload();
    await expect(page.getByTestId("job-phase")).toHaveText("running");
    await expect(page.getByTestId("job-delivered")).toHaveText("10");
    await expect(page.getByTestId("job-filtered-out")).toHaveText("30");
    await expect(page.getByTestId("job-lag")).toHaveText("0");
  }).toPass({ timeout: 20_000 });
  await expect(page.getByTestId("job-transitions")).toContainText("starting → running");
  await expect(page.getByTestId("route-job")).toContainText("No refused event is waiting for a retry.");
  await expect(page.getByTestId("deployments")).toContainText("first version v1");

  // This server (role all) runs the job itself: the workers page lists it with both partitions.
  await page.goto("/workers");
  await expect(async () => {
    await page.reload();
    await expect(page.getByTestId("workers-table")).toContainText(`alpha/${route} · partitions 0-1`);
  }).toPass({ timeout: 20_000 });
  await page.goto(`/routes/alpha/${route}`);

  // The desired state: pause the job from the console, see it paused, then resume it.
  const setState = async (state: string, why: string) => {
    // The page was just reloaded: a click before hydration could race the form's own handler.
    await expect(page.locator("body")).toHaveAttribute("data-hydrated", "true");
    const form = page.getByTestId("state-form");
    await form.getByLabel("Desired state").selectOption(state);
    await form.getByLabel("Why").fill(why);
    await form.getByRole("button", { name: "Set state" }).click();
    await expect(page.getByTestId("job-desired")).toHaveText(`desired: ${state}`);
    await expect(async () => {
      await page.reload();
      await expect(page.getByTestId("job-phase")).toHaveText(state);
    }).toPass({ timeout: 20_000 });
  };
  await setState("paused", "sink maintenance");
  await setState("running", "maintenance done");

  // A savepoint, and a rewind estimate (any state); the rewind itself needs the route stopped.
  await page.getByTestId("rewind-section").locator("summary").click();
  await page.getByLabel("Savepoint name").fill("before-edit");
  await page.getByRole("button", { name: "Take savepoint" }).click();
  await expect(page.getByTestId("savepoints")).toContainText("before-edit");
  await page.getByLabel("Rewind to").selectOption("earliest");
  await page.getByRole("button", { name: "Go" }).click();
  await expect(page.getByTestId("rewind-result")).toHaveText("Estimate: 40 event(s) would be delivered again, 0 skipped.");
  await page.getByLabel("Mode").selectOption("rewind");
  await page.getByRole("button", { name: "Go" }).click();
  await expect(page.getByTestId("rewind-section")).toContainText("must be stopped before a rewind");
  await page.screenshot({ path: "test-results/route-job.png", fullPage: true });

  // The preview runs the edited (unsaved) filter and projection on the newest events. The edit
  // page is reached by a link on the freshly loaded (hydrated) route page.
  await page.getByRole("link", { name: "Edit" }).click();
  await expect(page).toHaveURL(new RegExp(`/routes/alpha/${route}/edit$`));
  await fill(page, { "Filter (CEL)": "event.n >= 30", "Keep fields": "n" });
  await page.getByRole("button", { name: "Preview on recent events" }).click();
  await expect(page.getByTestId("preview-summary")).toHaveText("10 of 40 events pass; 0 cannot be evaluated.");
  await expect(page.getByTestId("preview-table")).toContainText('{"n":39}');
  await fill(page, { "Filter (CEL)": "event.n >=" });
  await page.getByRole("button", { name: "Preview on recent events" }).click();
  await expect(page.getByTestId("preview-error")).toContainText("filter: syntax error");

  // The job's dashboard: totals over the window, charts drawn from the stored samples, the
  // lifecycle on the same axis, and the effective configuration.
  await page.goto(`/routes/alpha/${route}/dashboard`);
  await expect(async () => {
    await page.reload();
    await expect(page.getByTestId("dash-delivered")).toHaveText("10");
  }).toPass({ timeout: 20_000 });
  await expect(page.getByTestId("dash-read")).toHaveText("40");
  await expect(page.getByTestId("dash-filtered")).toHaveText("30");
  const throughput = page.getByTestId("chart-throughput").locator("svg");
  await expect(throughput).toContainText("Throughput");
  await expect(throughput).toContainText("events/s");
  await expect(throughput).toContainText("delivered");
  expect(await throughput.locator("polyline").count()).toBeGreaterThan(0);
  await expect(page.getByTestId("chart-latency").locator("svg")).toContainText("p99");
  await expect(page.getByTestId("chart-batch-size").locator("svg")).toContainText("events per sink request");
  await expect(page.getByTestId("dash-sink-errors")).toHaveText("No failed sink requests.");
  await expect(page.getByTestId("timeline")).toContainText("starting → running");
  await expect(page.getByTestId("timeline")).toContainText("v1 create by alice");
  await expect(page.getByTestId("effective-config")).toContainText("job.checkpoint_interval_ms");
  // The route got the default alert rules; a healthy job has them all ok.
  await expect(page.getByTestId("alerts")).toContainText("nothing delivered for 600 s while events wait");
  await expect(page.getByTestId("alert-no_delivery")).toHaveText("ok");
  await expect(page.getByTestId("alert-failed")).toHaveText("ok");
  // An editor silences one rule, with a reason; the silence shows, and the audit log has it.
  await page.getByLabel("Silence", { exact: true }).selectOption("no_delivery");
  await fill(page, { Minutes: "30", Reason: "sink maintenance" });
  await page.getByRole("button", { name: "Silence", exact: true }).click();
  await expect(page.getByTestId("silences")).toContainText("no_delivery");
  await expect(page.getByTestId("silences")).toContainText("sink maintenance");
  await page.screenshot({ path: "test-results/job-dashboard.png", fullPage: true });
  await page.getByTestId("windows").getByRole("link", { name: "24h" }).click();
  await expect(page).toHaveURL(/window=24h$/);
  await expect(page.getByTestId("windows").getByRole("link", { name: "24h" })).toHaveAttribute("aria-current", "true");
  await expect(page.getByTestId("dash-delivered")).toHaveText("10");
  await expect(page.getByText("Totals over the last 24h.", { exact: false })).toBeVisible();
  // Operations share the timeline: the savepoint and the silence, by whom.
  await expect(page.getByTestId("timeline")).toContainText("savepoint by alice: before-edit");
  await expect(page.getByTestId("timeline")).toContainText("silence alerts by alice");
  await expect(page.getByTestId("timeline")).toContainText("first version v1 (no_gap)");

  await navigate(page, "Audit log");
  await expect(page.getByTestId("operations-table")).toContainText("silence alerts");
  await expect(page.getByTestId("operations-table")).toContainText(`route alpha/${route}`);

  // The platform overview lists the job as healthy, with its sparklines; filters are a plain GET.
  await navigate(page, "Jobs");
  await page.getByLabel("Stream", { exact: true }).fill(stream);
  await page.getByLabel("Health", { exact: true }).selectOption("healthy");
  await page.getByRole("button", { name: "Apply" }).click();
  await expect(page).toHaveURL(/health=healthy/);
  const row = page.getByTestId("jobs-table").locator("tr", { hasText: `alpha/${route}` });
  await expect(row).toContainText("healthy");
  await expect(row).toContainText(`${stream} → ${sink} (file)`);
  expect(await row.locator("svg").count()).toBe(2);
  await page.getByLabel("Health", { exact: true }).selectOption("failing");
  await page.getByRole("button", { name: "Apply" }).click();
  await expect(page.getByText("No job matches.")).toBeVisible();
});

test("a route to a production sink waits for an admin: the editor requests, an admin approves, the job starts", async ({ page }) => {
  const stream = unique("orders");
  const sink = unique("warehouse");
  const route = unique("to-warehouse");

  // An admin declares the policy: routes to sinks tagged "production" need approval.
  await signIn(page, users.admin);
  await navigate(page, "Approvals");
  await fill(page, { "Routes to sinks tagged": "production", "Reason for this change": "four eyes on production" });
  await page.getByRole("button", { name: "Save policy" }).click();
  await expect(page.getByLabel("Routes to sinks tagged", { exact: true })).toHaveValue("production");
  await signOut(page);

  // The editor's stream and sink apply at once; the route becomes a change request.
  await signIn(page, users.editor);
  await page.goto("/streams/new");
  await fill(page, { Name: stream, Partitions: "1" });
  await page.getByRole("button", { name: "Save stream" }).click();
  await expect(page).toHaveURL(new RegExp(`/streams/alpha/${stream}$`));
  await page.goto("/sinks/new");
  await page.getByLabel("Kind", { exact: true }).selectOption("file");
  await fill(page, { Name: sink, Directory: `e2e/${sink}`, Tags: "production" });
  await page.getByRole("button", { name: "Save sink" }).click();
  await expect(page).toHaveURL(new RegExp(`/sinks/alpha/${sink}$`));
  await page.goto("/routes/new");
  await fill(page, { Name: route, "Source stream": stream, Sink: sink, "Reason for this change": "orders to the warehouse" });
  await page.getByRole("button", { name: "Save route" }).click();
  const pending = page.getByTestId("pending-approval");
  await expect(pending).toContainText("needs an admin's approval");
  await expect(pending).toContainText('a route to a sink tagged "production"');
  await pending.getByRole("link", { name: "Follow the request" }).click();
  await expect(page.getByTestId("request-state")).toHaveText("pending");
  await expect(page.getByTestId("diff")).toContainText(sink);
  const requestUrl = page.url();
  await page.goto(`/routes/alpha/${route}`);
  await expect(page.getByRole("alert").filter({ hasText: "Not found." }).first()).toBeVisible();
  await signOut(page);

  // The admin sees the request in the inbox (counted in the navigation) and approves it.
  await signIn(page, users.admin);
  await expect(page.getByTestId("approvals-count")).toBeVisible();
  await navigate(page, "Approvals");
  await page.getByTestId("approvals-inbox").locator("tr", { hasText: route }).getByRole("link").click();
  await expect(page).toHaveURL(requestUrl);
  await fill(page, { Comment: "looks right" });
  await page.getByRole("button", { name: "Approve and apply" }).click();
  await expect(page.getByTestId("request-state")).toHaveText("approved");
  await expect(page.getByTestId("decided-by")).toContainText(users.admin.name);

  // The route exists now, authored by the editor, and its job runs.
  await page.goto(`/routes/alpha/${route}`);
  await expect(page.getByTestId("history")).toContainText(users.editor.name);
  await expect(async () => {
    await page.reload();
    await expect(page.getByTestId("job-phase")).toHaveText("running");
  }).toPass({ timeout: 20_000 });

  // An admin's own change waits for another admin: the request page offers no decision.
  await page.getByRole("link", { name: "Edit" }).click();
  await fill(page, { "Batch size": "50", "Reason for this change": "smaller batches" });
  await page.getByRole("button", { name: "Save route" }).click();
  await page.getByTestId("pending-approval").getByRole("link", { name: "Follow the request" }).click();
  await expect(page.getByTestId("own-request")).toBeVisible();
  await expect(page.getByRole("button", { name: "Approve and apply" })).toHaveCount(0);
  await page.screenshot({ path: "test-results/approvals.png", fullPage: true });
});

test("a processor's plan follows the query as it is typed, a bad query is refused at its field, and the processor runs", async ({ page }) => {
  const stream = unique("views");
  const sink = unique("counts");
  const processor = unique("per-minute");
  await signIn(page, users.editor);

  await page.goto("/streams/new");
  const schema = { type: "object", properties: { ts: { type: "string", format: "date-time" }, country: { type: "string" } } };
  await fill(page, { Name: stream, Partitions: "1", "JSON Schema": JSON.stringify(schema) });
  await page.getByRole("button", { name: "Save stream" }).click();
  await expect(page).toHaveURL(new RegExp(`/streams/alpha/${stream}$`));
  await page.getByLabel("Token name").fill("browser-test");
  await page.getByRole("button", { name: "Create producer token" }).click();
  const token = (await page.getByTestId("new-producer-token").innerText()).match(/kp_[A-Za-z0-9_-]+/)![0];
  // Two minutes of views, and a later one that closes them.
  const views = [
    { ts: "2026-12-07T10:00:05Z", country: "BR" },
    { ts: "2026-12-07T10:00:30Z", country: "BR" },
    { ts: "2026-12-07T10:00:40Z", country: "US" },
    { ts: "2026-12-07T10:05:00Z", country: "FR" },
  ];
  const resp = await page.request.post(`/ingest/${stream}`, {
    headers: { authorization: `Bearer ${token}`, "content-type": "application/x-ndjson" },
    data: views.map((v) => JSON.stringify(v)).join("\n"),
  });
  expect(resp.status()).toBe(200);

  // The results become a stream of their own.
  const counts = unique("view-counts");
  await page.goto("/streams/new");
  await fill(page, { Name: counts, Partitions: "1" });
  await page.getByRole("button", { name: "Save stream" }).click();
  await expect(page).toHaveURL(new RegExp(`/streams/alpha/${counts}$`));
  await page.goto("/sinks/new");
  await page.getByLabel("Kind", { exact: true }).selectOption("stream");
  await fill(page, { Name: sink, "Target stream": counts });
  await page.getByRole("button", { name: "Save sink" }).click();
  await expect(page).toHaveURL(new RegExp(`/sinks/alpha/${sink}$`));

  await navigate(page, "Processors");
  await page.getByRole("link", { name: "New processor" }).first().click();
  const plan = page.getByTestId("live-plan");
  // A typo is explained with its place in the query, before anything is saved.
  await page.getByLabel("Query", { exact: true }).fill(`SELECT country FROM ${stream} WHER country = 'BR'`);
  await expect(plan.getByTestId("plan-errors")).toContainText("line 1");
  // The plan follows the query: a windowed count, its columns and types.
  await page.getByLabel("Event-time column", { exact: true }).fill("ts");
  await page.getByLabel("Query", { exact: true }).fill(
    // A stream name with dashes is quoted, as in any SQL.
    `SELECT TUMBLE_START(ts, INTERVAL '1' MINUTE) AS minute, country, COUNT(*) AS views\nFROM "${stream}"\nGROUP BY TUMBLE(ts, INTERVAL '1' MINUTE), country`,
  );
  await expect(plan.getByTestId("plan-kind")).toContainText("windowed job");
  await expect(plan.getByTestId("plan-kind")).toContainText("tumbling 1m on ts");
  await expect(plan.getByTestId("plan-columns")).toContainText("minute");
  await expect(plan.getByTestId("plan-columns")).toContainText("bigint");
  // The preview runs the query on the stream's events and closes every window.
  await plan.getByRole("button", { name: "Preview on recent events" }).click();
  await expect(plan.getByTestId("preview-summary")).toContainText("4 events read · 3 results · 0 late");
  await expect(plan.getByTestId("preview-results")).toContainText("2026-12-07T10:00:00Z");
  // Changing the query clears the old preview.
  await page.getByLabel("Query", { exact: true }).press("End");
  await page.getByLabel("Query", { exact: true }).pressSequentially(" ");
  await expect(plan.getByTestId("preview")).toHaveCount(0);

  // Saving with a sink that does not exist names the field; then with the real one it saves.
  await fill(page, { Name: processor, Sink: "nowhere" });
  await page.getByRole("button", { name: "Save processor" }).click();
  await expect(page.getByTestId("error-sink")).toContainText("no sink named");
  await fill(page, { Sink: sink, "Reason for this change": "views per minute" });
  await page.getByRole("button", { name: "Save processor" }).click();
  await expect(page).toHaveURL(new RegExp(`/processors/alpha/${processor}$`));
  await expect(page.getByTestId("plan-operators")).toContainText("Aggregate");
  await expect(page.getByTestId("history")).toContainText("views per minute");

  // It runs: minute 10:00 closed: one row for BR (2 views), one for US, in the results' stream.
  await page.goto(`/streams/alpha/${counts}`);
  await expect(async () => {
    await page.reload();
    await expect(page.getByTestId("log-events")).toHaveText("2");
  }).toPass({ timeout: 30_000 });
  await expect(page.getByTestId("recent-events")).toContainText('"views":2');
  await page.goto(`/processors/alpha/${processor}`);
  await expect(page.getByTestId("job-phase")).toHaveText("running");
});

test("a CDC source is declared in the console: a refused host is named at its field, the URL is never shown, the capture's failure is on its page, a table without a stream gets one, and the capture restarts", async ({ page }) => {
  const stream = unique("orders");
  const source = unique("shop-db");
  await signIn(page, users.editor);
  await page.goto("/streams/new");
  await fill(page, { Name: stream, Partitions: "2" });
  await page.getByRole("button", { name: "Save stream" }).click();
  await expect(page).toHaveURL(new RegExp(`/streams/alpha/${stream}$`));

  await navigate(page, "Sources");
  await page.getByRole("link", { name: "New source" }).first().click();
  await fill(page, {
    Name: source,
    Tables: `public.orders -> ${stream}\npublic.order_items`,
    "Database URL (secret)": "postgres://keystone:s3cret-pw@127.0.0.1:5432/shop",
  });
  await page.getByRole("button", { name: "Save source" }).click();
  // The platform's own machine is not a destination a team may reach.
  await expect(page.getByTestId("error-secret_url")).toContainText("loopback");

  // A host that does not resolve passes the declaration; the capture then fails and says why.
  await fill(page, {
    "Database URL (secret)": "postgres://keystone:s3cret-pw@db.invalid:5432/shop",
    "Reason for this change": "orders into a stream",
  });
  await page.getByRole("button", { name: "Save source" }).click();
  await expect(page).toHaveURL(new RegExp(`/sources/alpha/${source}$`));
  await expect(page.getByTestId("history")).toContainText("orders into a stream");
  await expect(async () => {
    await page.reload();
    await expect(page.locator("#source-status")).toContainText("connecting to the source");
  }).toPass({ timeout: 30_000 });
  await expect(page.locator("body")).not.toContainText("s3cret-pw");
  // Each table links to its stream; the chart of changes per table is drawn.
  await expect(page.locator("#source-tables")).toContainText(`public.order_items → ${source}-order-items`);
  await expect(page.getByTestId("chart-source-rows").locator("svg")).toBeVisible();
  // An editor restarts the capture; the page says so at once.
  await page.getByTestId("restart-source").click();
  await expect(page.getByTestId("restart-result")).toContainText("Restart requested");
  await navigate(page, "Sources");
  const row = page.getByRole("row", { name: new RegExp(source) });
  await expect(row).toContainText(`public.orders → ${stream}`);
  // A table without a stream got one, created with the source.
  await expect(row).toContainText(`public.order_items → ${source}-order-items`);
  await page.goto(`/streams/alpha/${source}-order-items`);
  await expect(page.getByTestId("history")).toContainText(`created for source "${source}"`);
});
