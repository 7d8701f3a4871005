// Turn API-format workflows into UI-format ones with ComfyUI's own frontend (app.loadApiJson, then
// graph.serialize), so the UI files carry exactly what the frontend expects (widget order, sockets).
//   node export_ui.js URL OUT_DIR API_JSON...
"use strict";

const fs = require("fs");
const path = require("path");
const { openComfy } = require("./comfy_page");

const ARRANGE_MARGIN = 60;

async function main() {
  const [url, outDir, ...apiFiles] = process.argv.slice(2);
  const { browser, page } = await openComfy(url);
  try {
    for (const file of apiFiles) {
      const name = path.basename(file, ".json");
      const api = JSON.parse(fs.readFileSync(file, "utf8"));
      const workflow = await page.evaluate(async ({ api, name, ARRANGE_MARGIN }) => {
        await window.app.loadApiJson(api, name);
        // Shipped examples keep their seed, so a run reproduces the documented result.
        for (const node of window.app.graph.nodes) {
          for (const widget of node.widgets || []) {
            if (widget.name === "control_after_generate") widget.value = "fixed";
          }
        }
        // Room for the photo preview LoadImage shows once the image is loaded, then lay out by depth.
        for (const node of window.app.graph.nodes) {
          if (node.type === "LoadImage") node.size = [320, 420];
        }
        window.app.graph.arrange(ARRANGE_MARGIN);
        return window.app.graph.serialize();
      }, { api, name, ARRANGE_MARGIN });
      fs.writeFileSync(path.join(outDir, `${name}.json`), JSON.stringify(workflow, null, 2) + "\n");
      console.log(path.join(outDir, `${name}.json`));
    }
  } finally {
    await browser.close();
  }
}

main().catch((error) => { console.error(error); process.exit(1); });
