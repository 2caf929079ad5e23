import { expect, Page } from "@playwright/test";

// Find / act / check helpers, so the tests read as user stories.

export const users = {
  admin: { name: "admin", password: "admin-password-1" },
  editor: { name: "alice", password: "editor-password-1" },
  viewer: { name: "vera", password: "viewer-password-1" },
};

/** A name unique to this test run, valid as a Keystone object name. */
export function unique(prefix: string): string {
  return `${prefix}-${Date.now().toString(36)}${Math.floor(Math.random() * 1296).toString(36)}`;
}

export async function signIn(page: Page, user: { name: string; password: string }) {
  await page.goto("/login");
  await page.getByLabel("Username").fill(user.name);
  await page.getByLabel("Password").fill(user.password);
  await page.getByRole("button", { name: "Sign in" }).click();
  await expect(page.getByTestId("whoami")).toHaveText(user.name);
}

export async function signOut(page: Page) {
  await page.getByRole("button", { name: "Sign out" }).click();
  await expect(page).toHaveURL(/\/login$/);
}

export async function fill(page: Page, fields: Record<string, string>) {
  for (const [label, value] of Object.entries(fields)) {
    await page.getByLabel(label, { exact: true }).fill(value);
  }
}

/** Follows a link of the main navigation. */
export async function navigate(page: Page, name: string) {
  await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name, exact: true }).click();
}
