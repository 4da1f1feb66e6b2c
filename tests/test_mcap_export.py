"""``robotd replay LOG --mcap OUT``: read the MCAP back with the mcap reader and check it against the log."""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from mcap.reader import make_reader
from test_logread import header_record, synthetic_run, write_log

from calibration import LEG_JOINTS
from robotd.logs.foxglove_channels import TOPICS
from robotd.logs.logread import STAGES, read_log
from robotd.commands.replay import main as replay_main

T0_S = 100.0
STARTED_UNIX = 1_760_000_000.0


def decoder(schema: Any):  # noqa: ANN201 - returns a callable bytes -> message/dict
    """Decode with the schema the file carries (protobuf descriptor set, or JSON), as a viewer does."""
    if schema.encoding == "jsonschema":
        return json.loads
    assert schema.encoding == "protobuf"
    pool = descriptor_pool.DescriptorPool()
    for fd in descriptor_pb2.FileDescriptorSet.FromString(schema.data).file:
        pool.Add(fd)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(schema.name)).FromString


def read_mcap(path: Path) -> tuple[dict[str, list[tuple[int, Any]]], dict[str, str], dict[str, str]]:
    """Messages by topic as (log_time, decoded), the schema name per topic, and the metadata records."""
    by_topic: dict[str, list[tuple[int, Any]]] = defaultdict(list)
    schemas: dict[str, str] = {}
    decoders: dict[int, Any] = {}
    with open(path, "rb") as f:
        reader = make_reader(f)
        for schema, channel, message in reader.iter_messages(log_time_order=True):
            decode = decoders.setdefault(schema.id, decoder(schema))
            by_topic[channel.topic].append((message.log_time, decode(message.data)))
            schemas[channel.topic] = schema.name
        metadata = {m.name: m.metadata for m in reader.iter_metadata()}
    return by_topic, schemas, metadata


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("mcap")
    header = header_record(started_unix=STARTED_UNIX, started_monotonic=T0_S - 0.5)
    log_path = write_log(tmp / "run.log", synthetic_run(300, fall=(100, 150), stale=(200, 210), overrun_every=97,
                                                        t0_s=T0_S), header=header, summary={"ticks": 300})
    out = tmp / "run.mcap"
    assert replay_main([str(log_path), "--mcap", str(out)]) == 0
    return log_path, out


def test_channels_counts_and_schemas(exported: tuple[Path, Path]) -> None:
    log_path, out = exported
    log = read_log(log_path)
    by_topic, schemas, metadata = read_mcap(out)
    assert set(by_topic) == set(TOPICS)
    counts = Counter({topic: len(msgs) for topic, msgs in by_topic.items()})
    for topic in ("/tf", "/torso/pose", "/torso/gyro", "/torso/tilt", "/loop/latency_us", "/loop/timing",
                  "/policy/action", "/joints/targets", "/servo/pulses_us"):
        assert counts[topic] == log.n_ticks == 300, topic
    modes = [log.mode_names[c] for c in log.mode_code]
    mode_changes = 1 + sum(a != b for a, b in zip(modes, modes[1:]))
    assert counts["/events"] == len(log.events) + mode_changes + 1  # events, mode changes, the summary
    assert schemas["/tf"] == "foxglove.FrameTransform" and schemas["/torso/pose"] == "foxglove.PoseInFrame"
    assert schemas["/joints/targets"] == "foxglove.JointStates" and schemas["/events"] == "foxglove.Log"
    assert json.loads(metadata["robotd.header"]["joint_names"]) == log.header["joint_names"]
    assert metadata["robotd.header"]["phone_format"] == "sensagram"


def test_values_and_loop_timestamps(exported: tuple[Path, Path]) -> None:
    log_path, out = exported
    log = read_log(log_path)
    by_topic, _, _ = read_mcap(out)
    raw = list(log.records())
    for i in (0, 96, 120, 299):  # an ordinary tick, an overrun, a fallen one, the last
        t_ns = round((STARTED_UNIX + log.t_s[i] - (T0_S - 0.5)) * 1e9)
        log_time, latency = by_topic["/loop/latency_us"][i]
        assert abs(log_time - t_ns) <= 1  # the loop's clock, mapped to Unix time
        assert latency == pytest.approx({**{s: log.stages_us[s][i] for s in STAGES}, "tick": log.tick_us[i],
                                         "rx_to_tx": log.rx_to_tx_us[i]})
        _, tf = by_topic["/tf"][i]
        w, x, y, z = log.quat_wxyz[i]
        assert (tf.rotation.w, tf.rotation.x, tf.rotation.y, tf.rotation.z) == pytest.approx((w, x, y, z))
        assert tf.parent_frame_id == "world" and tf.child_frame_id == "torso"
        assert tf.timestamp.seconds * 10**9 + tf.timestamp.nanos == log_time
        _, timing = by_topic["/loop/timing"][i]
        assert timing["seq"] == log.seq[i] and timing["t_monotonic_s"] == log.t_s[i]
        assert timing["lateness_ms"] == pytest.approx((log.t_s[i] - log.deadline_s[i]) * 1e3)
        assert timing["mode"] == raw[i]["mode"] and timing["flags"] == raw[i]["flags"]
        _, action = by_topic["/policy/action"][i]
        assert list(action) == list(LEG_JOINTS) and list(action.values()) == pytest.approx(raw[i]["action"])
        _, targets = by_topic["/joints/targets"][i]
        assert [j.name for j in targets.joints] == log.header["joint_names"]
        assert [j.position for j in targets.joints] == pytest.approx(raw[i]["targets_rad"])
        _, pulses = by_topic["/servo/pulses_us"][i]
        names = dict(zip(map(str, log.header["channels"]), log.header["joint_names"]))
        assert pulses == {names[c]: p for c, p in raw[i]["pulses_us"].items()}
        _, tilt = by_topic["/torso/tilt"][i]
        assert tilt["pitch_deg"] == pytest.approx(math.degrees(2 * math.asin(y)), abs=1e-6)
    texts = [m.message for _, m in by_topic["/events"]]
    assert texts[0] == "mode - -> run" and "fall tilt_deg=80.0" in texts and "mode run -> fallen" in texts
    assert texts[-1].startswith("summary ") and json.loads(texts[-1][len("summary "):]) == {"ticks": 300}
    fall = next(m for _, m in by_topic["/events"] if m.message.startswith("fall"))
    assert fall.level == 3  # Warning


def test_a_rotated_compressed_log_exports_the_same(exported: tuple[Path, Path], tmp_path: Path) -> None:
    from robotd.logs.latency_log import LatencyLog

    log_path, _ = exported
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    logs = {"run.log": LatencyLog(tmp_path / "run.log", lines[0]),  # both at the writer's precision
            "run.log.zst": LatencyLog(tmp_path / "run.log.zst", lines[0], max_bytes=20_000, flush_interval_s=0.0)}
    for log in logs.values():
        for rec in lines[1:-1]:
            log.put(rec)
        log.close({k: v for k, v in lines[-1].items() if k != "type"})
    assert len(logs["run.log.zst"].segments) > 2
    out, out2 = tmp_path / "plain.mcap", tmp_path / "packed.mcap"
    assert replay_main([str(tmp_path / "run.log"), "--mcap", str(out)]) == 0
    assert replay_main([str(tmp_path / "run.log.zst"), "--mcap", str(out2)]) == 0
    plain, rotated = read_mcap(out)[0], read_mcap(out2)[0]
    assert {t: len(m) for t, m in plain.items()} == {t: len(m) for t, m in rotated.items()}
    assert plain["/loop/latency_us"] == rotated["/loop/latency_us"]
    assert plain["/loop/timing"] == rotated["/loop/timing"]
