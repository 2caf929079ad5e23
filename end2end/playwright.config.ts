import { defineConfig } from "@playwright/test";

const port = Number(process.env.KEYSTONE_E2E_PORT ?? 3917);

export default defineConfig({
  testDir: "./tests",
  timeout: 60_000,
  expect: { timeout: 10_000 },
  // One server, one database: tests use unique names, but run one at a time on this 2-core machine.
  workers: 1,
  retries: 0,
  outputDir: "./test-results",
  use: {
    baseURL: `http://127.0.0.1:${port}`,
    screenshot: "only-on-failure",
    trace: "retain-on-failure",
    launchOptions: {
      // Debian's Chromium: Playwright's own browser download cannot work on these machines.
      executablePath: process.env.CHROMIUM_PATH ?? "/usr/bin/chromium",
      args: [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
      ],
    },
  },
  webServer: {
    command: "./start-server.sh",
    url: `http://127.0.0.1:${port}/login`,
    timeout: 60_000,
    reuseExistingServer: false,
    env: {
      KEYSTONE_LISTEN: `127.0.0.1:${port}`,
      KEYSTONE_SITE_ROOT: process.env.KEYSTONE_SITE_ROOT ?? "../target/site",
      KEYSTONE_BIN: process.env.KEYSTONE_BIN ?? "../target/debug/keystone",
      // Dashboards fill within a second or two instead of ten.
      KEYSTONE_TELEMETRY_INTERVAL_MS: "1000",
    },
  },
});
