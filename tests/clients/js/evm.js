// Drives ethers through rpcbalancer in front of real EVM nodes (ganache), as a dapp would.
//
//   node evm.js URL PRIVATE_KEY
//
// ethers batches calls by default (a signed transaction can share a batch with reads) and
// checks the chain id beside most calls. Prints one JSON object: for every step,
// {"ok": true, "value": ...} or {"ok": false, "error": "..."}, and the hashes it sent.
'use strict';

const { ethers } = require('ethers');
const [url, key] = process.argv.slice(2);

// A contract of our own, 12 bytes of init code and 48 of runtime: every call returns 42 and
// emits one log with TOPIC.
const TOPIC = '0x' + '11'.repeat(32);
const RUNTIME = '602a600052' + '7f' + TOPIC.slice(2) + '60206000a1' + '60206000f3';
const INIT = '0x6030600c60003960306000f3' + RUNTIME;

const results = { sent: [] };
async function step(name, fn) {
  try {
    results[name] = { ok: true, value: await fn() };
  } catch (err) {
    const info = err && err.info ? ' ' + JSON.stringify(err.info) : '';
    results[name] = { ok: false, error: (String((err && (err.shortMessage || err.message)) || err) + info).slice(0, 1500) };
  }
}

(async () => {
  // A chain that mines at once: ethers' own 250 ms cache of identical calls would hand the
  // next transaction the nonce read for the one before (cacheTimeout -1 turns it off), and
  // receipts are waited for at a local pace.
  const provider = new ethers.JsonRpcProvider(url, undefined, { cacheTimeout: -1 });
  provider.pollingInterval = 200;
  const wallet = new ethers.Wallet(key, provider);
  let contract;
  let first;

  await step('chain_id', async () => String((await provider.getNetwork()).chainId));
  await step('block_number', () => provider.getBlockNumber());
  await step('block_by_number', async () => {
    first = await provider.getBlock(1);
    return first.hash;
  });
  await step('block_by_hash', async () => (await provider.getBlock(first.hash)).number);
  await step('balance', async () => String(await provider.getBalance(wallet.address)));
  await step('deploy', async () => {
    const tx = await wallet.sendTransaction({ data: INIT });
    results.sent.push(tx.hash);
    const receipt = await tx.wait(1, 30000);
    contract = receipt.contractAddress;
    return { status: receipt.status, address: contract };
  });
  await step('call', async () => String(BigInt(await provider.call({ to: contract, data: '0x' }))));
  await step('transaction', async () => {
    const tx = await wallet.sendTransaction({ to: contract, data: '0x' });
    results.sent.push(tx.hash);
    const receipt = await tx.wait(1, 30000);
    return { status: receipt.status, logs: receipt.logs.length, block: receipt.blockNumber };
  });
  await step('logs', async () => {
    const logs = await provider.getLogs({ fromBlock: 0, toBlock: 'latest', address: contract, topics: [TOPIC] });
    return logs.length;
  });
  await step('raw', async () => {
    const signed = await wallet.signTransaction(await wallet.populateTransaction({ to: contract, data: '0x' }));
    const tx = await provider.broadcastTransaction(signed);
    results.sent.push(tx.hash);
    return (await tx.wait(1, 30000)).status;
  });
  await step('receipt', async () => (await provider.getTransactionReceipt(results.sent[0])).contractAddress);
  provider.destroy();
  process.stdout.write(JSON.stringify(results) + '\n');
  process.exit(0);
})();
