// Browser test driver: load a UI-format workflow into ComfyUI's frontend, report missing node types,
// convert it to an API prompt and save a screenshot; with a widget-override JSON it also changes
// those widgets, presses Queue and waits for the result. Prints one JSON object on stdout for
// tests/integration/test_browser.py.
//   node ui_check.js URL WORKFLOW_JSON SCREENSHOT_PNG ['{"Step1XSampler": {"steps": 2}}']
"use strict";

const fs = require("fs");
const { openComfy, fitWholeGraph } = require("./comfy_page");

const RUN_TIMEOUT_MS = 300000;

async function main() {
  const [url, workflowFile, screenshot, overridesJson] = process.argv.slice(2);
  const workflow = JSON.parse(fs.readFileSync(workflowFile, "utf8"));
  const queue = overridesJson !== undefined;
  const overrides = JSON.parse(overridesJson || "{}");
  const { browser, page, consoleErrors } = await openComfy(url);
  try {
    const loaded = await page.evaluate(async (workflow) => {
      const missing = workflow.nodes.map((n) => n.type)
        .filter((type) => window.LiteGraph.registered_node_types[type] === undefined);
      await window.app.loadGraphData(workflow);
      const apiPrompt = (await window.app.graphToPrompt()).output;
      return { missing, apiPrompt, nodeCount: window.app.graph.nodes.length };
    }, workflow);
    // The frontend lists unknown node types in a dialog; its text names them.
    const dialogText = await page.locator(".p-dialog").allInnerTexts();

    const result = !queue ? {} : await page.evaluate(async ({ overrides, timeoutMs }) => {
      for (const node of window.app.graph.nodes) {
        for (const [name, value] of Object.entries(overrides[node.type] || {})) {
          const widget = (node.widgets || []).find((w) => w.name === name);
          if (widget) widget.value = value;
        }
      }
      const history = async () => (await fetch("/api/history")).json();
      const before = new Set(Object.keys(await history()));
      const queued = await window.app.queuePrompt(0, 1);
      const deadline = Date.now() + timeoutMs;
      let entry = null;
      while (Date.now() < deadline) {
        const fresh = Object.entries(await history()).filter(([id]) => !before.has(id));
        entry = fresh.length ? fresh[0][1] : null;
        if (entry && ["success", "error"].includes(entry.status && entry.status.status_str)) break;
        await new Promise((resolve) => setTimeout(resolve, 250));
      }
      return { queued, entry };
    }, { overrides, timeoutMs: RUN_TIMEOUT_MS });
    await page.waitForTimeout(1000);   // let the Save Image node show its picture
    await fitWholeGraph(page);         // after the picture: it makes the Save Image node taller
    await page.screenshot({ path: screenshot });
    console.log(JSON.stringify({ ...loaded, dialogText, consoleErrors, ...result }));
  } finally {
    await browser.close();
  }
}

main().catch((error) => { console.error(error); process.exit(1); });
