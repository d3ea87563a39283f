from __future__ import annotations

import logging
from pathlib import Path

import pytest

from rpcbalancer.config import DEFAULT_NODES, Config, display_url, from_mapping, load
from rpcbalancer.errors import ConfigError

# The config.yaml shipped by DoctorLai/steem-load-balancer, as its users have it.
DOCTORLAI_CONFIG = """\
nodes:
  - "https://api2.justyy.com"
  - "https://api.justyy.com"
  - "https://api.steemit.com"
rateLimit:
  windowMs: 10000
  maxRequests: 600
version: "2025-09-13"
max_age: 3
logging: true
max_payload_size: "5mb"
max_jussi_number_diff: 500
min_blockchain_version: "0.23.0"
logging_max_body_len: 100
retry_count: 3
user_agent: "Mozilla/5.0 (Windows NT 10.0; Win64; x64)"
sslCertPath: "${SSL_CERT_PATH}"
sslKeyPath: "${SSL_KEY_PATH}"
rejectUnauthorized: false
timeout: 2500
plimit: 5
strategy: max_jussi_number
weights:
  "https://api.justyy.com": 3
sticky: true
port: 9091
circuitBreaker:
  enabled: true
  failureThreshold: 4
  cooldownMs: 20000
cache:
  enabled: ${CACHE_ENABLED}
  ttl: ${CACHE_TTL}
"""


def test_defaults_serve_the_public_steem_nodes() -> None:
    config = load(None, env={})
    assert [n.url for n in config.nodes] == list(DEFAULT_NODES)
    assert config.strategy.name == "fastest"
    assert config.listen.host == "127.0.0.1"
    assert config.listen.port == 8080
    assert config.store.startswith("sqlite:///")
    assert config.max_block_lag == 10


def test_nodes_as_strings_or_mappings(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "nodes:\n"
        "  - http://a.example:8090\n"
        "  - url: https://user:pw@b.example/rpc?key=1\n"
        "    weight: 3\n"
        "    headers: {X-Edge-Key: '${EDGE}'}\n"
        "strategy: {name: race, race_ttl: 2}\n"
    )
    config = load(path, env={"EDGE": "s3cret"})
    a, b = config.nodes
    assert a.weight == 1.0
    assert a.name == "http://a.example:8090"
    assert b.weight == 3
    assert b.headers == {"X-Edge-Key": "s3cret"}
    assert b.name == "https://b.example/rpc"  # no credentials, no query
    assert config.strategy.name == "race"
    assert config.strategy.race_ttl == 2
    assert "s3cret" in config.secrets


def test_a_whole_placeholder_takes_its_yaml_type() -> None:
    config = from_mapping(
        {"nodes": ["http://a"], "retries": "${R}", "forward_paths": "${F}"},
        env={"R": "4", "F": "true"},
    )
    assert config.retries == 4
    assert config.forward_paths is True


def test_defaults_inside_placeholders() -> None:
    config = from_mapping({"nodes": ["http://a"], "user_agent": "x/${V:-9}"}, env={})
    assert config.user_agent == "x/9"


def test_missing_variables_are_warned_about_by_name(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        from_mapping({"nodes": ["http://a"], "user_agent": "ua-${NOPE}"}, env={})
    assert "NOPE" in caplog.text


def test_environment_overrides_the_node_list_and_flags_the_listen_address() -> None:
    config = load(
        None,
        env={"RPCBALANCER_NODES": "http://x:1, http://y:2"},
        overrides={"port": 9999, "host": "0.0.0.0"},
    )
    assert [n.url for n in config.nodes] == ["http://x:1", "http://y:2"]
    assert config.listen.port == 9999
    assert config.listen.host == "0.0.0.0"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"nodes": ["ftp://a"]}, "nodes.0.url: must be an http:// or https:// URL"),
        (
            {"nodes": [{"url": "http://a", "ws_url": "http://a"}]},
            "nodes.0.ws_url: must be a ws:// or wss:// URL",
        ),
        ({"nodes": ["http://a"], "websocket": {"max_message_bytes": 10}}, "max_message_bytes"),
        ({"nodes": []}, "nodes:"),
        ({"nodes": ["http://a"], "strategy": "fastest_ever"}, "strategy.name"),
        ({"nodes": ["http://a"], "retries": -1}, "retries"),
        ({"nodes": ["http://a"], "colour": "blue"}, "colour: unknown key"),
        ({"nodes": ["http://a", "http://a"]}, "listed twice"),
        ({"nodes": ["http://a"], "chain": "dogecoin"}, "unknown preset 'dogecoin'"),
        ({"nodes": ["http://a"], "min_version": "latest"}, "min_version: must be a dotted version"),
        ({"nodes": [{"url": "http://a", "weight": -2}]}, "nodes.0.weight"),
        ({"nodes": ["http://a:99999"]}, "invalid port"),
    ],
)
def test_bad_config_names_the_key(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_mapping(data, env={})
    assert message in str(info.value)


def test_bad_values_from_secrets_are_not_echoed() -> None:
    with pytest.raises(ConfigError) as info:
        from_mapping({"nodes": ["http://a"], "retries": "${TOKEN}"}, env={"TOKEN": "hunter2x"})
    assert "hunter2x" not in str(info.value)
    assert "retries" in str(info.value)


def test_file_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load(tmp_path / "missing.yaml", env={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(bad, env={})
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load(listy, env={})


def test_doctorlai_config_is_read_unchanged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(DOCTORLAI_CONFIG)
    with caplog.at_level(logging.WARNING):
        config = load(path, env={})
    assert isinstance(config, Config)
    assert [n.url for n in config.nodes][:2] == [
        "https://api2.justyy.com",
        "https://api.justyy.com",
    ]
    assert config.nodes[1].weight == 3
    assert all(not n.verify_tls for n in config.nodes)
    assert config.strategy.name == "max_block"
    assert config.max_block_lag == 500
    assert config.min_version == "0.23.0"
    assert config.timeouts.per_try == 2.5
    assert config.retries == 2  # their retry_count counts tries
    assert config.listen.port == 9091
    assert config.user_agent.startswith("Mozilla/5.0")
    assert config.circuit_breaker.failures == 4
    assert config.circuit_breaker.cooldown == 20
    assert config.rate_limit is not None
    window_s = 10  # their windowMs: 10000
    assert config.rate_limit.burst == 600  # their maxRequests
    assert config.rate_limit.rate == 600 / window_s
    # Every key not carried over is named in one warning, and so is the TLS downgrade.
    for key in ("sticky", "plimit", "max_age"):
        assert key in caplog.text
    assert "NOT verified" in caplog.text


@pytest.mark.parametrize(
    ("theirs", "ours"),
    [
        ("first", "first"),
        ("random", "random"),
        ("max_jussi_number", "max_block"),
        ("latest_version", "latest_version"),
        ("lowest_latency", "fastest"),
        ("weighted", "weighted"),
    ],
)
def test_doctorlai_strategy_names(theirs: str, ours: str) -> None:
    config = from_mapping({"nodes": ["http://a"], "strategy": theirs, "timeout": 1000}, env={})
    assert config.strategy.name == ours


def test_display_url_hides_credentials_and_query() -> None:
    assert display_url("https://u:p@h.example:8443/v3/?key=1") == "https://h.example:8443/v3"


def test_time_settings_take_durations_or_seconds() -> None:
    config = from_mapping(
        {
            "history_retention": "2d",
            "probe": {"interval": "1m", "timeout": "500ms"},
            "timeouts": {"total": "12", "per_try": 4},
        },
        env={},
    )
    assert config.history_retention == 2 * 86400
    assert (config.probe.interval, config.probe.timeout) == (60, 0.5)
    assert (config.timeouts.total, config.timeouts.per_try) == (12, 4)
    with pytest.raises(ConfigError, match=r"probe\.interval: 'soon' is not a duration"):
        from_mapping({"probe": {"interval": "soon"}}, env={})
    with pytest.raises(ConfigError, match=r"timeouts\.total: Input should be greater than 0"):
        from_mapping({"timeouts": {"total": "-3"}}, env={})


def test_one_server_in_two_roles_of_a_drone_config(tmp_path: Path) -> None:
    """drone's example with ``hived`` and ``hived-sync`` on one server (an operator's usual
    setup: one node behind both): read, not refused as "listed twice", and the two roles kept
    apart by name and store key (their metrics and health records must not mix)."""
    from rpcbalancer.balancer import Balancer

    from ..conftest import peer_file

    text = peer_file("drone-config.example.yaml").read_text()
    path = tmp_path / "config.yaml"
    path.write_text(text.replace("http://haproxy:7006", "http://haproxy:7008"))
    config = load(path, env={})
    groups = config.groups()
    assert [n.url for n in groups["hived"].nodes] == ["http://haproxy:7008"]
    assert [n.url for n in groups["hived-sync"].nodes] == ["http://haproxy:7008"]
    nodes = Balancer(config).fleet.nodes
    twins = [n for n in nodes if n.url == "http://haproxy:7008"]
    assert {n.group for n in twins} == {"hived", "hived-sync"}
    assert len({n.name for n in nodes}) == len({n.key for n in nodes}) == len(nodes)
    with pytest.raises(ConfigError, match=r"upstreams\.hived: .* is listed twice"):
        from_mapping({"upstreams": {"hived": {"nodes": ["http://a", "http://a"]}}}, env={})
