from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshserve.controller.serving_config import (
    MISSING_KEY_ERROR,
    ConfigError,
    ServingConfig,
    next_config,
    parse_config_yaml,
    parse_configmap_data,
)


def test_defaults_are_upstreams() -> None:
    c = parse_configmap_data(None).config
    assert (c.inference_service_name, c.inference_service_port, c.storage_secret_name) == ("modelmesh-serving", 8033, "storage-config")
    assert c.pods_per_runtime == 2 and c.headless_service is True
    assert c.scale_to_zero_enabled is True and c.scale_to_zero_grace_period_seconds == 60
    assert c.metrics_enabled and c.metrics_port == 2112 and c.metrics_scheme == "https"
    assert c.grpc_max_message_size_bytes == 16777216
    assert c.rest_proxy_enabled and c.rest_proxy_port == 8008
    assert c.built_in_server_types == ("triton", "mlserver", "ovms", "torchserve")
    assert c.allow_any_pvc is False and c.payload_processors == ()


def test_missing_config_key_is_an_error() -> None:
    with pytest.raises(ConfigError, match=MISSING_KEY_ERROR):
        parse_configmap_data({"other.yaml": "podsPerRuntime: 1"})


def test_keys_are_case_insensitive_at_every_level_but_label_keys_keep_case() -> None:
    c = parse_config_yaml(
        "PODSPERRUNTIME: 1\nscaletozero:\n  EnAbLeD: false\n  GRACEPERIODSECONDS: 5\n"
        "runtimePodLabels:\n  MyTeam: A\nRESTPROXY:\n  Port: 9000\n"
    ).config
    assert c.pods_per_runtime == 1 and c.scale_to_zero_enabled is False and c.scale_to_zero_grace_period_seconds == 5
    assert dict(c.runtime_pod_labels) == {"MyTeam": "A"}
    assert c.rest_proxy_port == 9000


def test_fvt_overrides() -> None:
    c = parse_config_yaml(
        "podsPerRuntime: 1\nrestProxy:\n  enabled: true\n  skipVerify: true\nscaleToZero:\n  enabled: false\n"
        "internalModelMeshEnvVars:\n  - name: BOOTSTRAP_CLEARANCE_PERIOD_MS\n    value: '0'\n"
    )
    assert c.config.rest_proxy_skip_verify and not c.config.scale_to_zero_enabled
    # accepted, never silently: what meshserve does not act on is named
    assert c.warnings == (
        "config key 'internalModelMeshEnvVars' has no effect in meshserve: there is no mm container: "
        "the router and scheduler take MESHSERVE_* settings",
        "config key 'restProxy.skipVerify' has no effect in meshserve: there is no rest-proxy container calling "
        "ModelMesh's gRPC port over TLS: the router serves REST and gRPC in one process",
    )


def test_unknown_keys_warn() -> None:
    assert parse_config_yaml("bogus: 1").warnings == ("unknown config key 'bogus' ignored",)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        pytest.param("podsPerRuntime: -1", "podsPerRuntime", id="negative"),
        pytest.param("podsPerRuntime: two", "podsPerRuntime", id="not-int"),
        pytest.param("podsPerRuntime: true", "podsPerRuntime", id="bool-as-int"),
        pytest.param("scaleToZero:\n  enabled: maybe", "scaleToZero.enabled", id="bad-bool"),
        pytest.param("scaleToZero:\n  gracePeriodSeconds: -3", "gracePeriodSeconds", id="negative-grace"),
        pytest.param("inferenceServicePort: 70000", "inferenceServicePort", id="port-range"),
        pytest.param("inferenceServiceName: Bad_Name", "inferenceServiceName", id="dns"),
        pytest.param("tls:\n  clientAuth: sometimes", "tls.clientAuth", id="client-auth"),
        pytest.param("payloadProcessors: ['a b']", "payloadProcessors", id="space"),
        pytest.param("metrics:\n  scheme: ftp", "metrics.scheme", id="scheme"),
        pytest.param("[1, 2]", "map", id="not-a-map"),
        pytest.param("a: [", "YAML", id="bad-yaml"),
        pytest.param("scaleToZero:\n  graceperiod: 3", "unknown", id="unknown-nested"),
    ],
)
def test_invalid_values_are_rejected_with_the_key(text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        parse_config_yaml(text)


def test_images_and_digest() -> None:
    c = parse_config_yaml("storageHelperImage:\n  name: reg/puller\n  tag: v2\n  digest: sha256:abc\n").config
    assert c.storage_helper_image.image == "reg/puller@sha256:abc"
    c = parse_config_yaml("storageHelperImage:\n  name: reg/puller\n").config
    assert c.storage_helper_image.image == "reg/puller:latest"
    assert c.storage_helper_image.command == ServingConfig().storage_helper_image.command


def test_endpoints() -> None:
    c = ServingConfig()
    assert c.grpc_endpoint("modelmesh-serving") == "grpc://modelmesh-serving.modelmesh-serving:8033"
    assert c.http_endpoint("ns") == "http://modelmesh-serving.ns:8008"
    assert parse_config_yaml("tls:\n  secretName: x").config.http_endpoint("ns").startswith("https://")
    assert parse_config_yaml("restProxy:\n  enabled: false").config.http_endpoint("ns") == ""


def test_bad_update_keeps_previous_good_config() -> None:
    good = next_config(ServingConfig(), {"config.yaml": "podsPerRuntime: 3"})
    assert good.error == "" and good.config.pods_per_runtime == 3
    bad = next_config(good.config, {"config.yaml": "podsPerRuntime: x"})
    assert bad.config is good.config and "podsPerRuntime" in bad.error
    deleted = next_config(good.config, None)
    assert deleted.config == ServingConfig()


def test_storage_secret_name_needs_restart() -> None:
    upd = next_config(ServingConfig(), {"config.yaml": "storageSecretName: other"})
    assert upd.restart_needed and upd.config.storage_secret_name == "storage-config"


@given(st.integers(min_value=0, max_value=65535), st.booleans(), st.integers(min_value=0, max_value=10**6))
def test_roundtrip_valid_values(pods: int, enabled: bool, grace: int) -> None:
    text = f"podsPerRuntime: {pods}\nscaleToZero:\n  enabled: {str(enabled).lower()}\n  gracePeriodSeconds: {grace}\n"
    c = parse_config_yaml(text).config
    assert (c.pods_per_runtime, c.scale_to_zero_enabled, c.scale_to_zero_grace_period_seconds) == (pods, enabled, grace)


@given(st.text(max_size=200))
def test_never_crashes_on_garbage(text: str) -> None:
    try:
        parse_config_yaml(text)
    except ConfigError:
        pass


@pytest.mark.parametrize(
    ("text", "warning"),
    [
        pytest.param("podsPerRuntme: 1", "unknown config key 'podsPerRuntme' ignored (did you mean 'podsPerRuntime'?)",
                     id="typo"),
        pytest.param("metric:\n  enabled: false", "unknown config key 'metric' ignored (did you mean 'metrics'?)",
                     id="singular"),
        pytest.param("allowAnyPvcs: true", "unknown config key 'allowAnyPvcs' ignored (did you mean 'allowAnyPVC'?)",
                     id="case-and-typo"),
        pytest.param("restproxyEnabled: true", "(did you mean 'restProxy'?)", id="flattened"),
        pytest.param("zzz: 1", "unknown config key 'zzz' ignored", id="nothing-near"),
    ],
)
def test_unknown_keys_warn_with_the_nearest_valid_key(text: str, warning: str) -> None:
    (got,) = parse_config_yaml(text).warnings
    assert warning in got
    if "did you mean" not in warning:
        assert "did you mean" not in got


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("tls:\n  secretname: s\n  clientAuht: require",
                     "tls: unknown field(s) 'clientAuht' (did you mean 'clientAuth'?)", id="tls"),
        pytest.param("metrics:\n  prot: 9000", "metrics: unknown field(s) 'prot' (did you mean 'port'?)", id="metrics"),
        pytest.param("metrics:\n  disablePrometheusOperator: true",
                     "(did you mean 'disablePrometheusOperatorSupport'?)", id="metrics-long"),
        pytest.param("scaleToZero:\n  gracePeriod: 3",
                     "scaleToZero: unknown field(s) 'gracePeriod' (did you mean 'gracePeriodSeconds'?)", id="scale-to-zero"),
        pytest.param("restProxy:\n  enable: false", "restProxy: unknown field(s) 'enable' (did you mean 'enabled'?)",
                     id="rest-proxy"),
        pytest.param("storageHelperImage:\n  nmae: x", "(did you mean 'name'?)", id="image"),
        pytest.param("storageHelperResources:\n  limit: {}", "(did you mean 'limits'?)", id="resources"),
        pytest.param("scaleToZero:\n  qqq: 1", "scaleToZero: unknown field(s) 'qqq'; valid fields: enabled, gracePeriodSeconds",
                     id="nothing-near"),
    ],
)
def test_unknown_nested_fields_are_refused_naming_the_nearest_valid_field(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config_yaml(text)
    assert message in str(err.value)


def test_every_valid_key_is_accepted_without_an_unknown_key_warning() -> None:
    from meshserve.controller.serving_config import SECTION_KEYS, TOP_LEVEL_KEYS

    assert parse_config_yaml("\n".join(f"{k}: null" for k in TOP_LEVEL_KEYS)).warnings == ()
    for section, fields in SECTION_KEYS.items():
        # every field named (values that parse: null is "not set" for each of them)
        text = f"{section}:\n" + "".join(f"  {f}: null\n" for f in fields)
        try:
            parse_config_yaml(text)
        except ConfigError as err:
            assert "unknown" not in str(err), err


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param("logger://*", id="upstream-logger"),
        pytest.param("grpc://proc:9000", id="grpc"),
        pytest.param("proc.ns:8080/sink", id="no-scheme"),
        pytest.param("http:///sink", id="no-host"),
        pytest.param("http://proc:99999/", id="bad-port"),
        pytest.param("http://[::1/", id="bad-ipv6"),
        pytest.param("ftp://files/x", id="ftp"),
    ],
)
def test_payload_processors_that_are_not_http_urls_are_refused_by_name(entry: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config_yaml(f"payloadProcessors: [{entry!r}]")
    assert f"payloadProcessors: entry {entry!r} is not an http(s) URL" in str(err.value)


def test_payload_processor_urls_are_kept_and_userinfo_is_never_echoed() -> None:
    urls = ("http://proc.ns:8080/sink?mymodel#predict", "HTTPS://proc.example.com/")
    assert parse_config_yaml(f"payloadProcessors: {list(urls)}").config.payload_processors == urls
    with pytest.raises(ConfigError) as err:
        parse_config_yaml("payloadProcessors: ['http://user:s3cret@:1/x']")
    assert "s3cret" not in str(err.value) and "***@" in str(err.value)


@pytest.mark.parametrize(
    ("text", "warning"),
    [
        pytest.param("tls:\n  secretName: t\n  clientAuth: optional", "config key 'tls.clientAuth': optional is honoured only in part",
                     id="client-auth-optional"),
        pytest.param("metrics:\n  disablePrometheusOperatorSupport: false",
                     "config key 'metrics.disablePrometheusOperatorSupport' has no effect in meshserve", id="operator-support"),
        pytest.param("modelMeshImage:\n  name: x", "config key 'modelMeshImage' has no effect in meshserve", id="mm-image"),
        pytest.param("restProxy:\n  image:\n    name: x", "config key 'restProxy.image' has no effect", id="rest-proxy-image"),
        pytest.param("etcdSecretName: etcd", "no etcd", id="etcd"),
    ],
)
def test_keys_that_are_not_applied_are_named_in_a_warning(text: str, warning: str) -> None:
    warnings = parse_config_yaml(text).warnings
    assert any(warning in w for w in warnings), warnings


def test_applied_keys_give_no_warning() -> None:
    text = (
        "podsPerRuntime: 1\nscaleToZero:\n  enabled: true\n  gracePeriodSeconds: 5\nmetrics:\n  enabled: true\n"
        "  port: 2112\n  scheme: https\nserviceAccountName: modelmesh\nruntimePodLabels: {a: b}\nbuiltInServerTypes: [mlserver]\n"
    )
    assert parse_config_yaml(text).warnings == ()
