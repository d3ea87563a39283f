// Follows the chain through rpcbalancer as an app does, for a while:
//
//   node stream.js CLIENT URL SECONDS
//
// CLIENT: dsteem | dhive. Streams blocks with blockchain.getBlocks (mode Latest: it polls
// the head, then reads every block up to it) and, beside it, polls the head every 100 ms.
// Prints one JSON object: the block numbers the stream gave (read from their ids), how many
// were null, and the heads the poller saw. tests/integration/test_one_chain.py checks them.
'use strict';

const [client, url, secondsArg] = process.argv.slice(2);
const lib = { dsteem: 'dsteem', dhive: '@hiveio/dhive' }[client];
if (!lib) {
  console.error(`unknown client ${client}; known: dsteem, dhive`);
  process.exit(2);
}
const { Client, BlockchainMode } = require(lib);
const c = new Client(url, { timeout: 10000 });
const end = Date.now() + Number(secondsArg) * 1000;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const out = { blocks: [], asked: [], nulls: 0, heads: [], errors: [] };

async function poll() {
  while (Date.now() < end) {
    try {
      const dgp = await c.database.getDynamicGlobalProperties();
      out.heads.push(dgp.head_block_number);
    } catch (err) {
      out.errors.push(`poll: ${String((err && err.message) || err).slice(0, 200)}`);
    }
    await sleep(100);
  }
}

async function stream() {
  try {
    // What getBlocks does, with the number asked kept beside the block given.
    for await (const num of c.blockchain.getBlockNumbers({ mode: BlockchainMode.Latest })) {
      out.asked.push(num);
      const block = await c.database.getBlock(num);
      if (!block) {
        out.nulls += 1;
      } else {
        const got = parseInt(block.block_id.slice(0, 8), 16);
        out.blocks.push(got);
        if (got !== num) out.errors.push(`asked for block ${num}, got ${got}`);
      }
      if (Date.now() >= end) break;
    }
  } catch (err) {
    out.errors.push(`stream: ${String((err && err.message) || err).slice(0, 200)}`);
  }
}

(async () => {
  await Promise.all([poll(), stream()]);
  process.stdout.write(JSON.stringify(out) + '\n');
  process.exit(0);
})();
