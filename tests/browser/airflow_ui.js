// Drives the Airflow 3.3.2 UI in Debian's chromium for tests/test_browser.py, one phase per call:
//   node airflow_ui.js <phase>   phases: trigger | review | report | clear
// Env: BASE_URL, AIRFLOW_USER, AIRFLOW_PASSWORD, DAG_ID, RUN_ID, TASK_ID + TASK_LABEL (clear), TASK_ID + OPTION (review),
//      SHOTS (screenshot folder), STATE (storage-state file: the login is kept between phases),
//      CONF (JSON: topics, cycles, questions_per_cycle, held_out_per_topic, review_dataset).
// Prints one JSON line with what it saw; exits non-zero with a one-line reason when a step fails.
'use strict';
const fs = require('fs');
const path = require('path');
const { chromium } = require('playwright-core');

const env = (name) => {
  if (!process.env[name]) throw new Error(`environment variable ${name} is required`);
  return process.env[name];
};
const BASE = env('BASE_URL').replace(/\/$/, '');
const SHOTS = env('SHOTS');
const STATE = env('STATE');
const DAG = env('DAG_ID');
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--no-first-run', '--disable-sync'];
const OPEN_DIALOG = '[role="dialog"][data-state="open"]';

async function shot(page, name) {
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
}

async function login(page) {
  await page.goto(`${BASE}/`);
  // The SPA redirects to the login page on the client side: wait for either the form or the app's Dags link.
  await page.waitForFunction(() => document.querySelector('input[name="password"]') || document.querySelector('a[href="/dags"]'));
  if (!(await page.locator('input[name="password"]').count())) return;
  await page.fill('input[name="username"]', env('AIRFLOW_USER'));
  await page.fill('input[name="password"]', env('AIRFLOW_PASSWORD'));
  await shot(page, '01-login');
  await page.click('button[type="submit"]');
  await page.waitForURL((url) => !url.toString().includes('/auth/login'), { timeout: 30000 });
}

async function setNumber(dialog, label, value) {
  const input = dialog.getByRole('spinbutton', { name: label, exact: true });
  await input.fill(String(value));
  await input.blur();
}

// A boolean param is a switch: its hidden checkbox carries the param's name; the visible control is the
// label around it.
async function setSwitch(dialog, param, value) {
  const input = dialog.locator(`input[name="element_${param}"]`);
  if ((await input.isChecked()) !== value) await dialog.locator(`label:has(input[name="element_${param}"])`).first().click();
  if ((await input.isChecked()) !== value) throw new Error(`the ${param} switch did not turn ${value ? 'on' : 'off'}`);
}

async function trigger(page) {
  const conf = JSON.parse(env('CONF'));
  await page.goto(`${BASE}/dags/${DAG}`);
  await page.click('[data-testid="trigger-dag-button"]');
  const dialog = page.locator(OPEN_DIALOG);
  await dialog.waitFor();
  await page.waitForLoadState('networkidle');  // the form re-renders once the DAG's params arrive
  // Topics: a multi-select; remove the defaults not asked for (their "x"), then type in the missing ones.
  const topicsId = await dialog.locator('label', { hasText: /^Topics/ }).getAttribute('for');
  const topicsInput = dialog.locator(`[id="${topicsId}"]`);
  const selected = dialog.locator('input[type="hidden"][name="element_topics"]');
  const current = await selected.evaluateAll((els) => els.map((e) => e.value).filter(Boolean));
  for (const topic of current.filter((t) => !conf.topics.includes(t))) {
    await dialog.locator(`[aria-label="Remove ${topic}"]`).click();
  }
  for (const topic of conf.topics.filter((t) => !current.includes(t))) {
    await topicsInput.fill(topic);
    await topicsInput.press('Enter');
  }
  await setNumber(dialog, 'Cycles', conf.cycles);
  await setNumber(dialog, 'Questions per cycle', conf.questions_per_cycle);
  if (conf.held_out_per_topic !== undefined) await setNumber(dialog, 'Held-out questions per topic', conf.held_out_per_topic);
  if (conf.review_dataset !== undefined) await setSwitch(dialog, 'review_dataset', conf.review_dataset);
  const chosen = await selected.evaluateAll((els) => els.map((e) => e.value).filter(Boolean));
  if (JSON.stringify(chosen) !== JSON.stringify(conf.topics)) throw new Error(`topics field holds ${JSON.stringify(chosen)}`);
  await shot(page, '02-trigger-form');
  await dialog.getByRole('button', { name: /Advanced Options/i }).click();
  await dialog.locator('input[name="dagRunId"]').fill(env('RUN_ID'));
  await shot(page, '02b-trigger-run-id-and-conf');
  await page.click('[data-testid="trigger-dag-submit"]');
  await page.locator(OPEN_DIALOG).waitFor({ state: 'detached', timeout: 30000 });
  await shot(page, '03-triggered');
  return { topics: chosen };
}

// Answer a waiting review (Airflow's human-in-the-loop form) on the task's Required Actions tab: read what
// the reviewer is shown, pick OPTION (one button per option), then wait until the UI shows it recorded.
async function review(page) {
  const taskId = env('TASK_ID');
  const option = env('OPTION');
  await page.goto(`${BASE}/dags/${DAG}/runs/${encodeURIComponent(env('RUN_ID'))}/tasks/${taskId}/required_actions`);
  const button = page.locator(`[data-testid="hitl-option-${option}"]`);
  await button.waitFor({ timeout: 60000 });
  await page.waitForLoadState('networkidle');
  const options = await page.locator('[data-testid^="hitl-option-"]').allInnerTexts();
  const shown = await page.locator('body').innerText();
  const name = taskId.replace(/\W+/g, '-');
  await shot(page, `04-review-${name}`);
  await button.click();
  await page.waitForFunction((sel) => document.querySelector(sel)?.disabled, `[data-testid="hitl-option-${option}"]`,
    { timeout: 60000, polling: 1000 });
  await shot(page, `04b-reviewed-${name}`);
  return { taskId, options, chosen: option, shown: shown.slice(0, 6000) };
}

async function report(page) {
  const runId = env('RUN_ID');
  await page.goto(`${BASE}/dags/${DAG}/runs/${encodeURIComponent(runId)}`);
  await page.getByRole('tab', { name: 'Report' }).or(page.getByRole('link', { name: 'Report', exact: true })).first().click();
  const frame = page.frameLocator('iframe').first();
  await frame.locator('h1').first().waitFor({ timeout: 60000 });
  const cycles = await frame.locator('table.cycle-metrics').evaluateAll((tables) => [...new Set(tables.map((t) => t.dataset.cycle))]);
  const headings = await frame.locator('h3').allInnerTexts();
  await shot(page, '05-report');
  return { cycles, headings, url: page.url() };
}

async function stateBadge(page, state) {
  return page.locator('[data-testid="state-badge"]').filter({ hasText: new RegExp(`^\\s*${state}\\s*$`, 'i') }).first();
}

// Clear a failed task from the graph view, then watch the task-instance panel until it reruns to success.
// The graph view can re-render back to the run while the task is selected; then "shift+c" opens the
// whole run's clear dialog. Open the task's own page and make sure the dialog is the task's.
async function openTaskClearDialog(page, taskId) {
  const taskUrl = `${BASE}/dags/${DAG}/runs/${encodeURIComponent(env('RUN_ID'))}/tasks/${taskId}`;
  for (let attempt = 0; attempt < 3; attempt++) {
    if (!new URL(page.url()).pathname.endsWith(`/tasks/${taskId}`)) await page.goto(taskUrl);
    await (await stateBadge(page, 'failed')).waitFor();
    await page.getByRole('button', { name: /shift\+c to clear/i }).first().click();
    const dialog = page.locator(OPEN_DIALOG);
    await dialog.waitFor();
    if (!(await dialog.innerText()).includes('Clear Dag Run')) return dialog;
    await page.keyboard.press('Escape');
    await dialog.waitFor({ state: 'detached' });
    await page.goto(taskUrl);
  }
  throw new Error(`the clear button kept opening the whole run's dialog, not ${taskId}'s`);
}

async function clear(page) {
  const taskId = env('TASK_ID');
  await page.goto(`${BASE}/dags/${DAG}/runs/${encodeURIComponent(env('RUN_ID'))}`);
  await page.getByRole('button', { name: /Show Graph/ }).click();
  await page.locator('.react-flow__node', { hasText: env('TASK_LABEL') }).first().click();
  await page.waitForURL((url) => url.pathname.endsWith(`/tasks/${taskId}`));
  await (await stateBadge(page, 'failed')).waitFor();
  await shot(page, '06-graph-failed-task');
  const dialog = await openTaskClearDialog(page, taskId);
  await dialog.getByText(/Affected Tasks: [1-9]/).waitFor();
  await shot(page, '07-clear-dialog');
  await dialog.getByRole('button', { name: /Confirm/ }).click();
  await page.locator(OPEN_DIALOG).waitFor({ state: 'detached' });
  const started = Date.now();
  const timeoutMs = Number(process.env.RERUN_TIMEOUT_S || 300) * 1000;
  const states = ['failed'];
  for (;;) {
    const seen = await page.locator('[data-testid="state-badge"]').allInnerTexts();  // the run's badge is icon-only here
    const state = (seen.find((t) => t.trim()) || '').trim().toLowerCase();
    if (state && states[states.length - 1] !== state) states.push(state);
    if (state === 'success' && states.length > 1) break;
    if (Date.now() - started > timeoutMs) throw new Error(`${taskId} did not rerun to success in the UI; states seen: ${states.join(' -> ')}`);
    await page.waitForTimeout(3000);
    await page.reload();
  }
  await shot(page, '08-rerun-succeeded');
  return { cleared: taskId, states };
}

const PHASES = { trigger, review, report, clear };

(async () => {
  const phase = process.argv[2];
  if (!PHASES[phase]) throw new Error(`unknown phase ${JSON.stringify(phase)}; use one of ${Object.keys(PHASES).join(', ')}`);
  fs.mkdirSync(SHOTS, { recursive: true });
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: ARGS });
  try {
    const context = await browser.newContext({ viewport: { width: 1440, height: 1000 },
      storageState: fs.existsSync(STATE) ? STATE : undefined });
    context.setDefaultTimeout(30000);
    const page = await context.newPage();
    try {
      await login(page);
      await context.storageState({ path: STATE });
      const result = await PHASES[phase](page);
      console.log(JSON.stringify({ phase, ...result }));
    } catch (err) {
      await shot(page, `error-${phase}`).catch(() => {});
      throw err;
    }
  } finally {
    await browser.close();
  }
})().catch((err) => {
  console.error(`airflow_ui.js: ${String(err.message || err).split('\n')[0]}`);
  process.exit(1);
});
