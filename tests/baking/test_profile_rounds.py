"""The bake profile in rounds: the interval and stop rule on made-up rounds, the record (noisy
profiles have no headline, the speed verdict, old records), the host, and one real profile of a
tiny classifier. Nothing here asserts which variant is faster or how long anything takes: the
machine may be busy."""

import json
import math
from pathlib import Path

import pytest
from scipy import stats

from flowstone.baking.config import SpeedGate
from flowstone.baking.host import HostInfo, host_info, int8_flags, parse_cpuinfo
from flowstone.baking.profile import (
    converged,
    profile_record,
    profile_round,
    ratio_interval,
    should_stop,
)
from flowstone.baking.records.profile import BatchTiming, ProfileRecord, VariantProfile

STORED = json.loads((Path(__file__).parent / "data" / "stored_records.json").read_text())
GATE = SpeedGate(floor=1.0, rel_ci=0.10, min_rounds=3, max_rounds=10, confidence=0.95)
# Round ratios that wander 0.6x-1.6x around 1x: ten of them pin it within 26%, not 10%.
NOISY = [1.1, 0.6, 1.5, 0.7, 1.3, 0.75, 1.6, 0.8, 1.2, 0.65]

X86_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma avx512f avx512dq avx512bw avx512vl avx512_vnni avx_vnni amx_bf16 amx_tile amx_int8

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma avx512f avx512dq avx512bw avx512vl avx512_vnni avx_vnni amx_bf16 amx_tile amx_int8
"""
OLD_X86_CPUINFO = """processor\t: 0
model name\t: Intel(R) Core(TM) i7-4770 CPU @ 3.40GHz
flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma
"""
ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp i8mm
CPU implementer\t: 0x41
CPU part\t: 0xd0c
"""


# --- the interval and the stop rule -------------------------------------------------------


def test_interval_is_a_t_interval_on_log_ratios_back_transformed():
    ratios = [1.20, 1.31, 1.25, 1.36, 1.28]
    logs = [math.log(r) for r in ratios]
    n, mean = len(logs), sum(logs) / len(logs)
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / (n - 1))
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    got = ratio_interval(ratios, 0.95)
    assert got.ratio == pytest.approx(math.exp(mean))  # the geometric mean
    assert got.low == pytest.approx(math.exp(mean - half))
    assert got.high == pytest.approx(math.exp(mean + half))
    # Multiplicative: the interval is symmetric in log, not in the ratio itself ...
    assert got.ratio / got.low == pytest.approx(got.high / got.ratio)
    # ... so the inverse ratios (original / baked) give the inverse interval.
    inverse = ratio_interval([1 / r for r in ratios], 0.95)
    assert (inverse.low, inverse.high) == pytest.approx((1 / got.high, 1 / got.low))
    assert ratio_interval(ratios, 0.99).high > got.high  # more confidence, wider


def test_interval_edge_cases():
    one = ratio_interval([1.4], 0.95)
    assert one.ratio == pytest.approx(1.4) and not one.bounded
    assert one.relative_half_width == math.inf
    same = ratio_interval([2.0, 2.0, 2.0], 0.95)
    assert same.low == pytest.approx(2.0) and same.high == pytest.approx(2.0)
    for bad in ([], [1.0, 0.0], [1.0, -2.0], [1.0, math.inf]):
        with pytest.raises(ValueError):
            ratio_interval(bad, 0.95)


def test_stops_once_the_interval_is_tight_but_not_before_min_rounds():
    steady = [1.41, 1.43, 1.42, 1.40, 1.44]
    assert ratio_interval(steady[:2], 0.95).relative_half_width <= GATE.rel_ci
    assert not should_stop(steady[:2], GATE)  # tight, but under min_rounds
    assert converged(steady[:3], GATE) and should_stop(steady[:3], GATE)
    two = SpeedGate(min_rounds=2, max_rounds=2)
    assert converged(steady[:2], two)


def test_stop_rule_follows_rel_ci():
    ratios = [1.0, 1.1, 1.2, 1.05, 1.15]
    width = ratio_interval(ratios, 0.95).relative_half_width
    assert converged(ratios, SpeedGate(rel_ci=width * 1.01, min_rounds=3))
    assert not converged(ratios, SpeedGate(rel_ci=width * 0.99, min_rounds=3))


def test_noisy_rounds_run_to_max_rounds_and_stay_unconverged():
    for n in range(1, len(NOISY)):
        assert not should_stop(NOISY[:n], GATE), n
    assert should_stop(NOISY, GATE) and not converged(NOISY, GATE)


# --- the record, from made-up rounds --------------------------------------------------------


def _variant(throughput: dict[str, float], fmt: str = "torch_module", size: int = 4000,
             rss: int = 2**27) -> VariantProfile:  # fmt: skip
    per_batch = {
        b: BatchTiming(latency_p50_ms=1000 * int(b) / t, latency_p95_ms=1200 * int(b) / t,
                       throughput_per_s=t, iterations=10)
        for b, t in throughput.items()
    }  # fmt: skip
    return VariantProfile(per_batch=per_batch, peak_rss_bytes=rss + 2**26, model_rss_bytes=rss,
                          load_seconds=0.1, torch_threads=2, threads=2, size_bytes=size,
                          format=fmt)  # fmt: skip


def _host() -> HostInfo:
    return HostInfo(cpu_model="Test CPU", machine="x86_64", flags=("avx2", "avx512_vnni"),
                    flags_known=True, cpu_count=2, threads=2, load_average_start=0.5,
                    load_average_end=0.7)  # fmt: skip


def _record(ratios: list[float], gate: SpeedGate = GATE, load: float = 0.6) -> ProfileRecord:
    """A profile whose round i measured ``ratios[i]`` at batch 8 (the original at a load-driven
    1000-1300 items/s); batch 1 runs at a steady 2x."""
    originals, bakeds, rounds = [], [], []
    for i, ratio in enumerate(ratios):
        base = 1000.0 + 100 * (i % 4)
        original = _variant({"1": 200.0, "8": base})
        baked = _variant({"1": 400.0, "8": base * ratio}, fmt="torchscript", size=2000,
                         rss=2**26)  # fmt: skip
        originals.append(original)
        bakeds.append(baked)
        rounds.append(profile_round(i + 1, "original" if i % 2 == 0 else "baked", original,
                                    baked, load))  # fmt: skip
    return profile_record(rounds, originals, bakeds, gate, _host())


def test_steady_rounds_give_a_headline_with_its_interval():
    record = _record([1.40, 1.43, 1.41, 1.42])
    assert not record.noisy and record.throughput_ratio is not None
    assert record.throughput_ratio == pytest.approx(ratio_interval([1.40, 1.43, 1.41, 1.42],
                                                                   0.95).ratio)  # fmt: skip
    assert record.ratio_ci_low < record.throughput_ratio < record.ratio_ci_high
    assert record.ratios["8"].throughput_ratio == pytest.approx(record.throughput_ratio)
    assert record.ratios["1"].throughput_ratio == pytest.approx(2.0)
    assert record.ratios["1"].speedup_p50 == pytest.approx(2.0)  # paired per round
    assert [r.first for r in record.rounds] == ["original", "baked", "original", "baked"]
    assert record.batch_sizes == [1, 8] and record.confidence == 0.95
    assert record.size_ratio == pytest.approx(0.5) and record.model_rss_ratio == 0.5
    summary = record.summary()
    assert summary.startswith("throughput ratio 1.4") and "95% CI" in summary
    assert summary.endswith(", 4 rounds)")


def test_noisy_rounds_give_no_headline_but_keep_rounds_and_interval():
    record = _record(NOISY)
    assert record.noisy and record.throughput_ratio is None
    assert len(record.rounds) == 10 and [r.ratio for r in record.rounds] == pytest.approx(NOISY)
    assert record.ratio_ci_low < 1.0 < record.ratio_ci_high
    assert record.summary().startswith("noisy: 95% CI ")
    assert record.summary().endswith("after 10 rounds, no headline")
    metadata = record.metadata(Path("chart.png"))
    assert not any(k.startswith("throughput_ratio") for k in metadata)  # no headline anywhere
    assert metadata["noisy"] is True and metadata["rounds"] == 10
    assert None not in metadata.values()
    back = ProfileRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    assert back == record and back.throughput_ratio is None


def test_metadata_leads_with_the_summary_and_shows_rounds_and_host():
    record = _record([1.40, 1.43, 1.41])
    metadata = record.metadata(Path("chart.png"))
    assert list(metadata)[0] == "throughput"
    assert metadata["throughput"] == record.summary()
    assert metadata["throughput_ratio_batch_8"] == round(record.throughput_ratio, 3)
    assert "avx2+avx512_vnni" in metadata["host"] and "load 0.50 -> 0.70" in metadata["host"]
    assert len(metadata["rounds_table"].splitlines()) == 2 + 3  # header, rule, a row a round
    assert None not in metadata.values()


def test_a_busy_machine_is_named_in_the_summary():
    busy = _record([1.40, 1.43, 1.41], load=4.6)
    assert busy.peak_load == 4.6
    assert busy.summary().endswith("3 rounds; busy: load up to 4.6 on 2 CPUs)")
    noisy = _record(NOISY, load=3.0)
    assert noisy.summary().endswith("no headline (busy: load up to 3.0 on 2 CPUs)")
    assert _record([1.40, 1.43, 1.41], load=1.9).busy_note() == ""


# --- the speed verdict ----------------------------------------------------------------------


def test_speed_verdict_fails_only_when_the_upper_bound_is_below_the_floor():
    slow = _record([0.10, 0.11, 0.10, 0.105])  # the "0.10x reported as success" bake
    passed, why = slow.speed_verdict(1.0)
    assert not passed and "slower than the floor 1.00x" in why
    fast = _record([1.40, 1.43, 1.41])
    assert fast.speed_verdict(1.0)[0]
    assert not fast.speed_verdict(2.0)[0]  # a higher floor it does not reach
    around = _record([0.97, 1.03, 1.0, 0.99])  # the floor inside the interval: not shown slower
    passed, why = around.speed_verdict(1.0)
    assert passed and "inside the interval" in why


def test_speed_verdict_of_a_noisy_profile_uses_its_interval():
    noisy = _record(NOISY)
    passed, why = noisy.speed_verdict(1.0)
    assert passed and why.startswith("noisy:")  # 1.0 is inside its interval
    noisy_slow = _record([r / 10 for r in NOISY])  # as noisy, all far below 1x
    assert noisy_slow.noisy
    passed, why = noisy_slow.speed_verdict(1.0)
    assert not passed and "upper bound" in why
    check = noisy_slow.speed_check_metadata(1.0)
    assert check["noisy"] is True and "throughput_ratio" not in check and None not in check.values()


# --- records stored before rounds -----------------------------------------------------------


def test_old_records_load_without_the_new_keys():
    stored = STORED["bake_profile"]
    assert "rounds" not in stored and "host" not in stored
    record = ProfileRecord.from_dict(stored)
    assert record.host is None and record.rounds == [] and not record.noisy
    assert record.ratio_ci_low is None and record.ratio_ci_high is None
    assert record.confidence is None
    assert record.to_dict() == stored  # written back in its own shape
    assert (
        record.summary()
        == f"throughput ratio {stored['throughput_ratio']:.2f}x (one pass, no interval)"
    )
    assert record.speed_verdict(1.0)[0] and not record.speed_verdict(10.0)[0]
    minimal = {k: v for k, v in stored.items() if k != "model_rss_ratio"}
    assert ProfileRecord.from_dict(minimal).model_rss_ratio is None


# --- the host -------------------------------------------------------------------------------


def test_cpuinfo_parsing_keeps_the_int8_flags_in_a_stable_order():
    model, flags = parse_cpuinfo(X86_CPUINFO)
    assert model == "Intel(R) Xeon(R) Platinum 8480+"
    assert flags == ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_tile",
                     "amx_int8")  # fmt: skip
    assert parse_cpuinfo(OLD_X86_CPUINFO) == ("Intel(R) Core(TM) i7-4770 CPU @ 3.40GHz",
                                              ("avx2",))  # fmt: skip
    arm_model, arm_flags = parse_cpuinfo(ARM_CPUINFO)
    assert arm_flags == ("asimddp", "i8mm") and "0xd0c" in arm_model
    assert int8_flags({"amx_int8", "avx2", "sse2"}) == ("avx2", "amx_int8")


def test_flags_key_and_round_trip():
    host = HostInfo(cpu_model="x", machine="x86_64", flags=("avx2", "avx512_vnni"),
                    flags_known=True, cpu_count=4, threads=2)  # fmt: skip
    assert host.flags_key() == "avx2+avx512_vnni"
    assert HostInfo.from_dict(json.loads(json.dumps(host.to_dict()))) == host
    bare = HostInfo(cpu_model="x", machine="x86_64", flags=(), flags_known=True, cpu_count=1,
                    threads=1)  # fmt: skip
    assert bare.flags_key() == "baseline"
    unknown = HostInfo(cpu_model="x", machine="?", flags=(), flags_known=False, cpu_count=1,
                       threads=1)  # fmt: skip
    assert unknown.flags_key() == "unknown"


def test_this_host_is_read():
    host = host_info(threads=1)
    assert host.cpu_model and host.cpu_count >= 1 and host.threads == 1
    assert host.flags_key()
    assert host.ended().load_average_end is not None or host.load_average_start is None


# --- one real profile -----------------------------------------------------------------------


@pytest.mark.slow
def test_profile_of_a_tiny_classifier_has_its_rounds_and_host(tmp_path):
    from bake_helpers import write_tiny_classifier

    from flowstone.baking import pipeline
    from flowstone.baking.profile import profile_variants

    drop = write_tiny_classifier(tmp_path / "models", passes="[quantize_dynamic, torchscript]",
                                 extra="speed: {min_rounds: 2, max_rounds: 2}\n")  # fmt: skip
    source = pipeline.prepare_source("tiny", drop, tmp_path / "ws")
    baked = pipeline.run_passes(source)
    config = source.bake_config()
    assert (config.speed.min_rounds, config.speed.max_rounds) == (2, 2)
    lines: list[str] = []
    record = profile_variants(source, baked, config, [], log=lines.append)
    assert len(record.rounds) == 2 and [r.index for r in record.rounds] == [1, 2]
    assert [r.first for r in record.rounds] == ["original", "baked"]
    for r in record.rounds:
        assert set(r.original) == set(r.baked) == {"1", "8"}
        assert r.ratio == pytest.approx(r.baked_throughput_per_s / r.original_throughput_per_s)
    assert record.host is not None and record.host.flags_known == host_info().flags_known
    assert record.host.flags_key() == host_info().flags_key()
    assert record.host.threads == record.threads
    assert record.ratio_ci_low is not None and record.ratio_ci_high is not None
    assert record.ratio_ci_low <= record.ratio_ci_high and record.confidence == 0.95
    assert (record.throughput_ratio is None) == record.noisy  # either outcome is fine here
    assert record.original.format == "torch_module" and record.baked.format == "torchscript"
    assert record.original.model_rss_bytes > 0 and record.baked.model_rss_bytes > 0
    assert sum(line.startswith("round ") for line in lines) == 2
    assert isinstance(record.speed_verdict(config.speed.floor)[0], bool)
    assert ProfileRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record


def test_the_measuring_server_reports_what_it_could_not_import():
    from flowstone.baking.profile import MeasuringServer, ProfileError

    with pytest.raises(ProfileError, match="no_such_module_for_flowstone"):
        MeasuringServer(["no_such_module_for_flowstone"])


@pytest.mark.slow
def test_a_variant_that_cannot_load_fails_with_its_traceback(tmp_path):
    from flowstone.baking.artifacts import Artifact
    from flowstone.baking.profile import MeasuringServer, ProfileError, preload_modules

    missing = Artifact(format="torchscript", path=tmp_path / "missing.pt", task="classifier")
    with MeasuringServer(preload_modules([missing])) as server:
        with pytest.raises(ProfileError, match="Traceback") as failed:
            server.measure(missing, [1], 1, [4], [])
        assert "missing.pt" in str(failed.value)
        # The server outlives a failed child: the next measurement is answered too.
        with pytest.raises(ProfileError, match="missing.pt"):
            server.measure(missing, [1], 1, [4], [])


def test_measuring_servers_are_shared_per_library_set_and_replaced_when_dead():
    """A step's models share one server per library set (its imports are paid once); one that
    died is replaced, not reused."""
    from flowstone.baking.profile import MeasuringServers

    with MeasuringServers() as servers:
        first = servers.get(["json"])
        assert servers.get(["json"]) is first
        other = servers.get(["json", "csv"])
        assert other is not first and other.alive
        first._process.kill()
        first._process.join(10)
        replacement = servers.get(["json"])
        assert replacement is not first and replacement.alive
    assert not replacement.alive and not other.alive
