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

  // What an attacker would inject: an inline event handler and a script element without the
  // nonce. Both are refused and reported.
  await page.evaluate(() => {
    document.body.insertAdjacentHTML("beforeend", '<img src="/favicon.svg?csp" onload="window.__pwned = 1">');
    const s = document.createElement("script");
    s.textContent = "window.__pwned = 2";
    document.body.appendChild(s);
  });
  await expect.poll(async () => (await violations(page)).length).toBeGreaterThanOrEqual(2);
  expect(await page.evaluate(() => (window as unknown as Watched).__pwned)).toBeUndefined();
  expect((await violations(page)).every((v) => v.startsWith("script-src"))).toBe(true);
});
