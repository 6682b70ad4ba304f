import pytest

from mesh.settings import Settings, SettingsError


def test_settings_are_read_from_livebet_variables() -> None:
    s = Settings.from_env(
        "betting",
        {
            "LIVEBET_GRPC_PORT": "50400",
            "LIVEBET_REPLICA": "2",
            "LIVEBET_NATS_URL": "nats://h:1",
            "LIVEBET_LOG_LEVEL": "debug",
        },
    )
    assert (s.service, s.grpc_port, s.replica, s.nats_url, s.log_level) == ("betting", 50400, 2, "nats://h:1", "DEBUG")
    assert s.instance == "betting-2"


def test_defaults_apply_when_variables_are_absent() -> None:
    s = Settings.from_env("feed", {})
    assert s.grpc_port == 0
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.grace_seconds == 5.0


def test_round_trip_through_env() -> None:
    s = Settings.from_env("odds", {"LIVEBET_GRPC_PORT": "7", "LIVEBET_GRACE_SECONDS": "1.5"})
    assert Settings.from_env("odds", s.to_env()) == s


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LIVEBET_GRPC_PORT": "eighty"}, "LIVEBET_GRPC_PORT must be an integer"),
        ({"LIVEBET_GRPC_PORT": "70000"}, "LIVEBET_GRPC_PORT must be between 0 and 65535"),
        ({"LIVEBET_GRACE_SECONDS": "-1"}, "LIVEBET_GRACE_SECONDS must be at least 0"),
        ({"LIVEBET_LOG_LEVEL": "loud"}, "LIVEBET_LOG_LEVEL must be one of"),
    ],
)
def test_malformed_variable_is_named_in_the_error(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env("feed", env)


def test_settings_are_immutable() -> None:
    s = Settings.from_env("feed", {})
    with pytest.raises(AttributeError):
        s.grpc_port = 1  # type: ignore[misc]


def test_jetstream_replicas_come_from_the_environment() -> None:
    import pytest

    from feed.adapters.jetstream import stream_config
    from mesh.settings import SettingsError, jetstream_replicas

    assert jetstream_replicas({}) == 1
    assert jetstream_replicas({"LIVEBET_JETSTREAM_REPLICAS": "3"}) == 3
    with pytest.raises(SettingsError):
        jetstream_replicas({"LIVEBET_JETSTREAM_REPLICAS": "9"})
    assert stream_config(replicas=3).num_replicas == 3


def test_drain_and_instance_settings() -> None:
    from mesh.settings import Settings

    s = Settings.from_env("odds", {"LIVEBET_DRAIN_SECONDS": "1.5", "LIVEBET_INSTANCE": "odds-7f9c-abcde"})
    assert s.drain_seconds == 1.5 and s.instance == "odds-7f9c-abcde"
    assert Settings.from_env("odds", {"LIVEBET_REPLICA": "2"}).instance == "odds-2"
