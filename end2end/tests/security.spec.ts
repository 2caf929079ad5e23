import { expect, Page, test } from "@playwright/test";
import { fill, navigate, signIn, unique, users } from "./helpers";

type Watched = Window & { __violations: string[]; __pwned?: number };

/** Records every Content-Security-Policy violation the page reports, from its first script on. */
async function watchViolations(page: Page) {
  await page.addInitScript(() => {
    const w = window as unknown as Watched;
    w.__violations = [];
    document.addEventListener("securitypolicyviolation", (e) =>
      w.__violations.push(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`),
    );
  });
}

const violations = (page: Page) => page.evaluate(() => (window as unknown as Watched).__violations);

test("the console hydrates and works under its script policy; injected scripts never run", async ({ page }) => {
  await watchViolations(page);
  const response = await page.goto("/login");
  const policy = response!.headers()["content-security-policy"];
  expect(policy).toMatch(/script-src 'nonce-[A-Za-z0-9_-]{22,}' 'strict-dynamic' 'wasm-unsafe-eval'/);
  expect(policy).not.toContain("unsafe-inline");
  expect(policy).toContain("frame-ancestors 'none'");

  await signIn(page, users.editor);
  // The bundle ran: the WebAssembly loaded and hydrated the page under the policy.
  await expect(page.locator("body")).toHaveAttribute("data-hydrated", "true");

  // Client-side work: a stream declared through a hydrated form, pages with charts.
  const stream = unique("csp");
  await navigate(page, "Streams");
  await page.getByRole("link", { name: "New stream" }).first().click();
  await fill(page, { Name: stream, Partitions: "1", "Reason for this change": "policy check" });
  await page.getByRole("button", { name: "Save stream" }).click();
  await expect(page).toHaveURL(new RegExp(`/streams/alpha/${stream}$`));
  await expect(page.getByTestId("spec")).toContainText("partitions");
  // Each page loaded afresh hydrates under its own response's nonce.
  for (const path of [`/streams/alpha/${stream}`, "/jobs", "/audit", "/"]) {
    await page.goto(path);
    await expect(page.locator("body")).toHaveAttribute("data-hydrated", "true");
  }
  expect(await violations(page)).toEqual([]);

  // What an attacker would inject into a page (stored in some field and rendered unescaped): an
  // inline script without the response's nonce, and an inline event handler. The page still
  // hydrates with its own nonced scripts; the injected ones are refused and reported.
  await page.route("**/jobs", async (route) => {
    const response = await route.fetch();
    const injected = '<script>window.__pwned = 1</script><img src="/no-such-image.png" onerror="window.__pwned = 2">';
    const body = (await response.text()).replace("</body>", `${injected}</body>`);
    const headers = { ...response.headers() };
    delete headers["content-encoding"];
    delete headers["content-length"];
    await route.fulfill({ status: response.status(), headers, body });
  });
  await page.goto("/jobs");
  await expect(page.locator("body")).toHaveAttribute("data-hydrated", "true");
  const directives = async () => (await violations(page)).map((v) => v.split(" ")[0]).sort();
  await expect.poll(directives).toEqual(["script-src-attr", "script-src-elem"]);
  expect(await page.evaluate(() => (window as unknown as Watched).__pwned)).toBeUndefined();
});
