"""The benchmark harness, report and anchors: timing bookkeeping, ratios, JSON, size mixes. No speed is judged."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import anchors, harness, report
from tests.utils import assert_close_to_reference


def _case(**kw) -> harness.Case:
    base = dict(op="toy", shapes={"B": 2, "N": 5}, dtype="float32", size_mix="uniform",
                units={"atoms": 10, "molecules": 2}, flops=100.0, bytes=40.0)
    return harness.Case(**(base | kw))


def test_time_fn_rotates_inputs_and_orders_percentiles():
    seen = []
    inputs = [(torch.full((3,), float(i)),) for i in range(3)]
    t = harness.time_fn(lambda x: seen.append(int(x[0])), inputs, torch.device("cpu"), warmup=1, iters=5)
    assert t["iters"] >= harness.MIN_ITERS and t["warmup"] == harness.MIN_WARMUP
    assert len(seen) == t["warmup"] + t["iters"], "first call + warm-up + timed calls"
    assert set(seen) == {0, 1, 2} and t["rotations"] == 3
    assert 0 <= t["min_ms"] <= t["p20_ms"] <= t["median_ms"] <= t["p80_ms"]
    assert t["peak_mem_bytes"] is None  # no CPU allocator statistics: never invented


def test_run_ratios_json_and_environment(tmp_path):
    r = harness.Run("unit", device="cpu")
    x = torch.randn(64, 64)
    inputs = r.rotated(lambda: (torch.randn(64, 64),), max_sets=2)
    assert len(inputs) == 2 and inputs[0][0].shape == x.shape
    case = _case()
    ref = r.measure(case, "reference", lambda a: a @ a @ a, inputs)
    fast = r.measure(case, "molm_fast:toy", lambda a: a + 1, inputs)
    r.measure(case, "broken", lambda a: (_ for _ in ()).throw(ValueError("boom")), inputs)
    path = r.write(tmp_path)
    doc = json.loads(path.read_text())
    recs = {rec["provider"]: rec for rec in doc["records"]}
    assert recs["molm_fast:toy"]["speedup_vs_reference"] == pytest.approx(ref["median_ms"] / fast["median_ms"])
    assert recs["reference"]["speedup_vs_reference"] == pytest.approx(1.0)
    assert "ValueError: boom" in recs["broken"]["skipped"] and recs["broken"]["speedup_vs_reference"] is None
    for key in ("op", "provider", "pass", "shapes", "dtype", "size_mix", "median_ms", "p20_ms", "p80_ms", "units",
                "throughput", "flops", "bytes", "roofline_fraction", "first_call_ms"):
        assert key in recs["reference"], key
    assert recs["reference"]["throughput"]["atoms_per_s"] == pytest.approx(10 / (ref["median_ms"] / 1e3))
    assert recs["reference"]["roofline_fraction"] is None  # no honest CPU peak
    env = doc["environment"]
    for key in ("device", "driver", "cuda", "torch", "triton", "molm_fast", "build_info", "git_commit", "git_dirty",
                "cpu", "date"):
        assert key in env, key
    assert env["cpu"]["model"] and env["cpu"]["torch_threads"] >= 1


def test_compare_interleaves_providers_and_keeps_going_past_a_failure():
    order = []
    providers = {"reference": lambda x: order.append("r"), "molm_fast:toy": lambda x: order.append("m"),
                 "broken": lambda x: (_ for _ in ()).throw(RuntimeError("no kernel"))}
    r = harness.Run("unit", device="cpu")
    recs = r.compare(_case(), providers, [(torch.zeros(1),)])
    by = {rec["provider"]: rec for rec in recs}
    assert "RuntimeError: no kernel" in by["broken"]["skipped"]
    assert by["reference"]["iters"] == by["molm_fast:toy"]["iters"] >= harness.MIN_ITERS
    timed = order[2 * harness.MIN_WARMUP:]  # after each provider's own warm-up: one call of each per round
    assert all({timed[i], timed[i + 1]} == {"r", "m"} for i in range(0, len(timed), 2))


def test_once_records_a_single_timed_call():
    calls = []
    r = harness.Run("unit", device="cpu")
    rec = r.once(_case(), "molm_fast:toy", lambda: calls.append(1))
    assert calls == [1] and rec["iters"] == 1 and rec["median_ms"] >= 0
    assert "ZeroDivisionError" in r.once(_case(), "broken", lambda: 1 / 0)["skipped"]


def test_deadline_records_skips_instead_of_dropping():
    r = harness.Run("unit", device="cpu")
    r.deadline = 0.0
    rec = r.measure(_case(), "reference", lambda: None, [()])
    assert "time budget" in rec["skipped"] and r.records == [rec]


def test_with_grad_returns_input_gradients():
    x = torch.randn(4, 3, requires_grad=True)
    (gx,) = harness.with_grad(lambda a: (a * a).sum(-1), wrt=[0])(x)
    assert gx.shape == x.shape


@pytest.mark.parametrize("name", ["pubchem324k", "chebi20", "pcdes"])
def test_size_mixes_are_real_counts(name):
    atoms = harness.size_mix(name)
    assert len(atoms) > 1000 and min(atoms) >= 0  # PubChem324k holds a molecule with no heavy atom
    ns = harness.sample_sizes(name, 256, seed=3)
    assert ns == harness.sample_sizes(name, 256, seed=3)
    assert all(2 <= n <= harness.CROP_ATOMS + 2 for n in ns)
    assert set(n - 2 for n in ns) <= {min(a, harness.CROP_ATOMS) for a in atoms}


def test_size_mix_unknown_name_is_a_clear_error():
    with pytest.raises(ValueError, match="size_mix: unknown mix 'nope'"):
        harness.size_mix("nope")


def test_padded_coords_zero_beyond_each_molecule_and_conformers_load():
    c = harness.padded_coords([2, 5, 1], torch.device("cpu"))
    assert c.shape == (3, 5, 3) and not c[0, 2:].any() and not c[2, 1:].any() and c[1].abs().sum() > 0
    confs = harness.cached_conformers()
    assert len(confs) > 300 and all(z.shape[0] == xyz.shape[0] for z, xyz in confs[:20])


def test_report_builds_summary_table_and_plots(tmp_path):
    r = harness.Run("cpu", device="cpu")
    for B in (1, 4):
        case = _case(shapes={"B": B, "N": 5}, size_mix="pubchem324k" if B == 4 else "uniform")
        for name, fn in (("reference", lambda a: a @ a), ("molm_fast:toy", lambda a: a + 1),
                         ("reference_compiled", lambda a: a * 2)):
            r.measure(case, name, fn, [(torch.randn(8, 8),)])
    path = r.write(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{report.BEGIN}\nold rows\n{report.END}\ntail\n")
    report.main(["--results", str(tmp_path), "--readme", str(readme)])
    table = (tmp_path / "README_TABLE.md").read_text()
    assert readme.read_text() == f"# x\n{report.BEGIN}\n{table}{report.END}\ntail\n"
    assert "| cpu | toy | forward | B=4 N=5 (pubchem324k) float32 |" in table and path.name in table
    assert "molm_fast:toy" in (tmp_path / "SUMMARY.md").read_text()
    assert (tmp_path / "plots" / "cpu_cpu_toy_speedup.png").stat().st_size > 0


def test_report_takes_each_op_from_its_latest_run():
    def doc(started, ops, quick=False):
        return {"suite": "cpu", "quick": quick, "started": started, "environment": {"device": "cpu"},
                "records": [{"op": op, "case": op} for op in ops]}

    runs = [("full.json", doc("2026-01-01", ["a", "b", "c"])), ("only_a.json", doc("2026-01-02", ["a"])),
            ("quick_b.json", doc("2026-01-03", ["b"], quick=True))]
    picked = {name: sorted(r["op"] for r in d["records"]) for name, d in report.latest(runs)}
    assert picked == {"full.json": ["b", "c"], "only_a.json": ["a"]}  # a full run beats a later quick one


def test_sdpa_composite_matches_the_pair_bias_attention_math():
    B, H, N, D = 2, 4, 7, 8
    q, k, v = (torch.randn(B, H, N, D) for _ in range(3))
    bias = torch.randn(B, H, N, N)
    out, logits = anchors.sdpa_composite(q, k, v, bias, scale=0.3)
    ref_logits = (q * 0.3) @ k.transpose(-1, -2) + bias  # [B, H, N, N]
    assert_close_to_reference(logits, ref_logits, name="logits")
    assert_close_to_reference(out, torch.softmax(ref_logits, -1) @ v, name="out")


def test_unimol_tools_attention_matches_the_pair_bias_attention_math():
    B, H, N, D = 2, 4, 7, 8
    q, k, v = (torch.randn(B, N, H, D).transpose(1, 2) for _ in range(3))  # non-contiguous views, as in the model
    bias = torch.randn(B, H, N, N)
    try:
        out, logits = anchors.unimol_tools_attention(q, k, v, bias, scale=0.3)
    except anchors.AnchorUnavailable as exc:
        pytest.skip(f"unimol-tools anchor unavailable here: {exc}")
    ref_logits = (q * 0.3) @ k.transpose(-1, -2) + bias  # [B, H, N, N]
    assert_close_to_reference(logits, ref_logits, name="logits")
    assert_close_to_reference(out, torch.softmax(ref_logits, -1) @ v, name="out")


def test_unimol_tools_anchor_runs_or_says_why():
    reason = anchors.unimol_tools_available()
    assert reason is None or "unimol-tools" in reason
    try:
        model = anchors.unimol_tools_encoder(torch.device("cpu"), layers=1)
    except anchors.AnchorUnavailable as exc:
        pytest.skip(f"unimol-tools anchor unavailable here: {exc}")
    tokens, dist, edge = anchors.unimol_inputs([4, 6, 2], torch.device("cpu"))
    with torch.no_grad():
        out = model(tokens, dist, edge)
    assert out.shape == (3, 6, 512) and torch.isfinite(out).all()


def test_units_count_real_work_with_the_headline_first():
    u = harness.units([5, 3, 2], headline="tokens")
    assert list(u)[0] == "tokens"
    assert u == {"tokens": 10, "molecules": 3, "atoms": 4, "pairs": 38}


@pytest.mark.gpu
def test_cuda_timing_peak_memory_and_roofline():
    r = harness.Run("unit", device="cuda")
    x = torch.randn(1024, 1024, device="cuda", dtype=torch.bfloat16)
    case = _case(dtype="bfloat16", flops=2.0 * 1024**3, bytes=3 * 2.0 * 1024**2)
    recs = r.compare(case, {"reference": lambda a: a @ a, "molm_fast:toy": lambda a: a + 1}, [(x,)])
    for rec in recs:
        assert "skipped" not in rec and rec["median_ms"] > 0
        assert rec["peak_mem_bytes"] >= 1024 * 1024 * 2  # at least the output
        if harness.peaks(r.device) is not None:
            assert 0 < rec["roofline_fraction"] and rec["roofline_bound"] in ("compute", "memory")
    assert harness.environment()["gpu"]["name"]


def test_batching_policies_cover_the_mix_once_and_respect_their_budgets():
    everything = sorted(min(a, harness.CROP_ATOMS) + 2 for a in harness.size_mix("pubchem324k"))
    ref = harness.batches_reference("pubchem324k", B=64, seed=1)
    bucketed = harness.batches_bucketed("pubchem324k", width=8, tokens=4096, seed=1)
    packed = harness.batches_packed("pubchem324k", tokens=4096, seed=1)
    for batches in (ref, bucketed, packed):
        assert sorted(n for b in batches for n in b) == everything
    assert all(len(b) == 64 for b in ref[:-1])
    assert all(max(b) * len(b) <= 4096 and max(b) - min(b) < 8 for b in bucketed)
    assert all(sum(b) <= 4096 or len(b) == 1 for b in packed)
    assert harness.cu_seqlens([3, 1, 4]).tolist() == [0, 3, 4, 8]
    assert harness.cu_seqlens([3]).dtype == torch.int32


def test_hf_anchor_builders_run_a_step_at_tiny_sizes():
    cpu = torch.device("cpu")
    llm = anchors.llama_lora(dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                  num_key_value_heads=2, vocab_size=50), cpu, torch.float32)
    trainable = [n for n, p in llm.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert {t for t in anchors.LORA_TARGETS if any(f".{t}." in n for n in trainable)} == set(anchors.LORA_TARGETS)
    ids = torch.randint(0, 50, (2, 5))
    llm(input_ids=ids, labels=ids).loss.backward()
    qformer = anchors.blip2_qformer(cpu, layers=2)
    with torch.no_grad():
        out = qformer(query_embeds=torch.randn(2, 8, 768), encoder_hidden_states=torch.randn(2, 6, 512),
                      encoder_attention_mask=torch.ones(2, 6, dtype=torch.long))
    assert out.last_hidden_state.shape == (2, 8, 768)
