// Drives one real Steem/Hive client library through rpcbalancer, as an app would.
//
//   node steem.js CLIENT URL BLOCK
//
// CLIENT: dsteem | dhive | steem-js | steem-js-appbase. BLOCK: an irreversible block number.
// Prints one JSON object: for every step, {"ok": true, "value": ...} or {"ok": false,
// "error": "..."}. tests/integration/test_clients.py reads it and checks the values.
'use strict';

const [client, url, blockArg] = process.argv.slice(2);
const block = Number(blockArg);
// A test key known to everyone (the simulated accounts all use it): never for a real chain.
const WIF = '5JRaypasxMx1L97ZUX7YuC5Psb5EAbF821kkAGtBj7xCJFQcbLg';
// Each run's transfer its own (the simulated nodes, as a chain does, refuse a duplicate).
const MEMO = `through rpcbalancer: ${client} ${process.pid} ${Date.now()}`;

const results = {};
async function step(name, fn) {
  try {
    results[name] = { ok: true, value: await fn() };
  } catch (err) {
    results[name] = { ok: false, error: String((err && err.message) || err).slice(0, 500) };
  }
}

// dsteem and dhive share one API: dsteem sends `call` with condenser_api, dhive sends
// condenser_api.* directly.
async function dClient(lib, amount) {
  const { Client, PrivateKey } = require(lib);
  const c = new Client(url, { timeout: 10000 });
  await step('connect', async () => {
    const config = await c.database.getConfig();
    const props = await c.database.getChainProperties();
    const version = await c.database.call('get_version', []);
    const dgp = await c.database.getDynamicGlobalProperties();
    return {
      chain_id: c.chainId.toString('hex'),
      config_keys: Object.keys(config).length,
      config_chain_id: config.STEEM_CHAIN_ID || config.HIVE_CHAIN_ID,
      account_creation_fee: String(props.account_creation_fee),
      version: version.blockchain_version,
      head: dgp.head_block_number,
    };
  });
  await step('current_block', () => c.blockchain.getCurrentBlockNum());
  await step('block', async () => (await c.database.getBlock(block)).block_id);
  await step('block_header', async () => (await c.database.getBlockHeader(block)).previous);
  await step('account', async () => {
    const [account] = await c.database.getAccounts(['alice']);
    return { name: account.name, balance: String(account.balance), key: account.active.key_auths[0][0] };
  });
  await step('content', async () => (await c.database.call('get_content', ['alice', 'hello'])).title);
  await step('broadcast', async () => {
    const key = PrivateKey.fromString(WIF);
    const op = { from: 'alice', to: 'bob', amount, memo: MEMO };
    const confirmation = await c.broadcast.transfer(op, key);
    return confirmation.id || confirmation.block_num || confirmation;
  });
}

// steem-js sends `call` with database_api (or condenser_api with useAppbaseApi), asks
// login_api for the version, and broadcasts through network_broadcast_api.
async function steemJs(appbase) {
  const steem = require('steem');
  steem.api.setOptions({ url, useAppbaseApi: appbase });
  await step('connect', async () => {
    const config = await steem.api.getConfigAsync();
    const props = await steem.api.getChainPropertiesAsync();
    const version = await steem.api.getVersionAsync();
    const dgp = await steem.api.getDynamicGlobalPropertiesAsync();
    return {
      chain_id: steem.config.get('chain_id'),
      config_keys: Object.keys(config).length,
      config_chain_id: config.STEEM_CHAIN_ID,
      account_creation_fee: String(props.account_creation_fee),
      version: version.blockchain_version,
      head: dgp.head_block_number,
    };
  });
  await step('block', async () => (await steem.api.getBlockAsync(block)).block_id);
  await step('block_header', async () => (await steem.api.getBlockHeaderAsync(block)).previous);
  await step('account', async () => {
    const [account] = await steem.api.getAccountsAsync(['alice']);
    return { name: account.name, balance: String(account.balance), key: account.active.key_auths[0][0] };
  });
  await step('content', async () => (await steem.api.getContentAsync('alice', 'hello')).title);
  await step('broadcast', async () => {
    const done = await steem.broadcast.transferAsync(WIF, 'alice', 'bob', '1.000 STEEM', MEMO);
    return done.id || done.block_num || done;
  });
}

const drivers = {
  dsteem: () => dClient('dsteem', '1.000 STEEM'),
  dhive: () => dClient('@hiveio/dhive', '1.000 HIVE'),
  'steem-js': () => steemJs(false),
  'steem-js-appbase': () => steemJs(true),
};

(async () => {
  const driver = drivers[client];
  if (!driver) {
    console.error(`unknown client ${client}; known: ${Object.keys(drivers).join(', ')}`);
    process.exit(2);
  }
  await driver();
  process.stdout.write(JSON.stringify(results) + '\n');
  process.exit(0); // steem-js keeps sockets open
})();
