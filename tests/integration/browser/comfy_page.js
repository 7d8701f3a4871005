// Drive ComfyUI's own frontend in headless Chromium (playwright-core, no bundled browser).
// Shared by ui_check.js (the browser test) and export_ui.js (makes the UI-format workflows).
"use strict";

const { chromium } = require("playwright-core");

const GRAPH_READY_TIMEOUT_MS = 60000;

function chromiumPath() {
  return process.env.CHROMIUM_PATH || "/usr/bin/chromium";
}

async function openComfy(url) {
  const browser = await chromium.launch({
    executablePath: chromiumPath(),
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
  const consoleErrors = [];
  page.on("pageerror", (error) => consoleErrors.push(String(error)));
  await page.goto(url, { waitUntil: "domcontentloaded" });
  await page.waitForFunction(
    () => window.app && window.app.graph && window.LiteGraph &&
      window.LiteGraph.registered_node_types["KSampler"] !== undefined,
    null, { timeout: GRAPH_READY_TIMEOUT_MS });
  return { browser, page, consoleErrors };
}

// Zoom so every node is in view, title bars included: the frontend's "Zoom to fit" command
// (Comfy.Canvas.FitView: LGraphCanvas.fitViewToSelectionAnimated over all nodes when none is selected, the
// graph filling 75 % of the canvas, a 350 ms animation), then wait for the animation to end. Fitting
// tighter makes the canvas drop node text (its low-detail rendering below about 60 % zoom).
const FIT_VIEW_SETTLE_MS = 600;

async function fitWholeGraph(page) {
  await page.evaluate(async () => {
    window.app.canvas.deselectAll();
    await window.app.extensionManager.command.execute("Comfy.Canvas.FitView");
  });
  await page.waitForTimeout(FIT_VIEW_SETTLE_MS);
}

module.exports = { openComfy, fitWholeGraph };
