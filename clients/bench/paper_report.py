"""Text table, Markdown report and PNG plots of `chameleon bench paper` (all SIMULATED)."""
from __future__ import annotations

import json
import math
from pathlib import Path

PAPER = {  # Iliakopoulou et al., MICRO 2025, section 5 (design card section 4)
    "throughput_vs_slora": 1.5, "cache_only_vs_slora": 1.2, "sched_only_vs_slora": 1.05,
    "p99_cut_high_load": 0.807, "p50_cut_high_load": 0.481, "hit_rate": 0.75,
}


def _ci(m: float, h: float, fmt: str = "{:.0f}") -> str:
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return "n/a"
    return (fmt + " ± " + fmt).format(m, h)


def _header(d: dict) -> str:
    sw = d["sweep"]
    load = sw.get("adapter_load", "overlapped")
    engine = ("adapter loads block the GPU as in S-LoRA's engine" if load == "blocking"
              else "adapter loads overlap compute")
    return (f"SIMULATED on the {sw['profile']} cost model ({engine}): {sw['num_adapters']} adapters, "
            f"{sw['seeds']} seeds (0..{sw['seeds'] - 1}), runs of {sw['duration_s']:.0f} s with "
            f"the first {sw['warmup_s']:.0f} s left out; ± = 95% t-interval over seeds; "
            f"SLO: TTFT P99 <= {d['slo']['ttft_s']:.0f} s and TBT P99 <= "
            f"{d['slo']['tbt_s'] * 1000:.0f} ms")


def format_table(res: dict) -> str:
    d = res["details"]
    lines = [_header(d),
             f"{'policy':<22}{'RPS':>6}{'P50 TTFT ms':>18}{'P99 TTFT ms':>20}{'P99 TBT ms':>14}"
             f"{'hit rate':>15}{'miss ms':>9}{'squash':>8}{'SLO':>5}"]
    for pt in d["points"]:
        lines.append(
            f"{pt['policy']:<22}{pt['rps']:>6.1f}{_ci(pt['p50_ttft_ms'], pt['p50_ttft_ms_ci']):>18}"
            f"{_ci(pt['p99_ttft_ms'], pt['p99_ttft_ms_ci']):>20}{pt['p99_tbt_ms']:>14.0f}"
            f"{_ci(pt['hit_rate'], pt['hit_rate_ci'], '{:.2f}'):>15}{pt['miss_cost_ms']:>9.1f}"
            f"{pt['squash_rate']:>8.3f}{pt['slo_met_seeds']:>3}/{d['sweep']['seeds']}")
    lines.append("throughput at SLO (highest swept RPS meeting both SLOs, every lower one too):")
    cmp = d["comparison"]
    for p, thr in res["result"]["throughput_rps"].items():
        ratio = cmp.get("throughput_vs_slora", {}).get(p)
        extra = f"   {_ci(ratio[0], ratio[1], '{:.2f}')}x slora" if ratio else ""
        lines.append(f"  {p:<22}{_ci(thr, d['throughput_ci'][p], '{:.1f}')} RPS{extra}")
    miss = cmp.get("slora_miss_rps")
    if miss is not None and "chameleon" in cmp.get("p99_cut_vs_slora_at_miss", {}):
        p99 = cmp["p99_cut_vs_slora_at_miss"]["chameleon"]
        p50 = cmp["p50_cut_vs_slora_at_miss"]["chameleon"]
        lines.append(f"at {miss} RPS (slora's first SLO miss): chameleon's P99 TTFT is "
                     f"{_ci(100 * p99[0], 100 * p99[1], '{:.1f}')}% lower than slora's, its P50 "
                     f"{_ci(100 * p50[0], 100 * p50[1], '{:.1f}')}% lower (paper: 80.7% / 48.1%)")
    same = cmp.get("chameleon_p99_vs_fifo_same_cache")
    if same:
        worst = max(same.items(), key=lambda kv: kv[1][0])
        lines.append(f"chameleon P99 TTFT / fifo's on the same cache: worst {worst[1][0]:.3f} "
                     f"(± {worst[1][1]:.3f}) at {worst[0]} RPS")
    lines.append("hit rate vs number of adapters at "
                 f"{d['sweep']['adapter_rps']} RPS: " + ", ".join(
                     f"{a['policy']}@{a['num_adapters']}={a['hit_rate']:.2f}" for a in d["adapters"]))
    lines.append(f"({len(res['result']['rows'])} sweep runs, {d['wall_s']:.0f} s wall)")
    return "\n".join(lines)


def markdown(res: dict, command: str) -> str:
    d = res["details"]
    out = ["# Chameleon vs S-LoRA: the paper's evaluation, SIMULATED", "",
           _header(d) + ".", "", f"Command: `{command}`", "",
           "| policy | RPS | P50 TTFT ms | P99 TTFT ms | P99 TBT ms | hit rate | miss cost ms "
           "| squash rate | queueing share (rank 8/16/32/64/128) | SLO met |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for pt in d["points"]:
        share = "/".join(f"{v:.2f}" for v in pt["queue_share_by_rank"].values())
        out.append(f"| {pt['policy']} | {pt['rps']:.1f} | {_ci(pt['p50_ttft_ms'], pt['p50_ttft_ms_ci'])} "
                   f"| {_ci(pt['p99_ttft_ms'], pt['p99_ttft_ms_ci'])} | {pt['p99_tbt_ms']:.0f} "
                   f"| {_ci(pt['hit_rate'], pt['hit_rate_ci'], '{:.2f}')} | {pt['miss_cost_ms']:.1f} "
                   f"| {pt['squash_rate']:.3f} | {share} | {pt['slo_met_seeds']}/{d['sweep']['seeds']} |")
    out += ["", "| policy | throughput at SLO (RPS) | vs slora |", "|---|---|---|"]
    for p, thr in res["result"]["throughput_rps"].items():
        r = d["comparison"].get("throughput_vs_slora", {}).get(p)
        out.append(f"| {p} | {_ci(thr, d['throughput_ci'][p], '{:.1f}')} | "
                   f"{_ci(r[0], r[1], '{:.2f}') + 'x' if r else '1x'} |")
    out += ["", "```", format_table(res), "```", ""]
    return "\n".join(out)


def plots(res: dict, out_dir: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = res["details"]
    written = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for p in d["sweep"]["policies"]:
        pts = [x for x in d["points"] if x["policy"] == p]
        ax.errorbar([x["rps"] for x in pts], [x["p99_ttft_ms"] / 1000 for x in pts],
                    yerr=[x["p99_ttft_ms_ci"] / 1000 for x in pts], label=p, marker="o", capsize=2)
    ax.axhline(d["slo"]["ttft_s"], color="grey", linestyle="--", linewidth=1)
    ax.set(yscale="log", xlabel="requests per second", ylabel="P99 TTFT (s)",
           title=f"P99 TTFT vs load (SIMULATED, {d['sweep']['profile']}, {d['sweep']['seeds']} seeds)")
    ax.legend(fontsize=7)
    written.append(_save(fig, out_dir / "p99_ttft_vs_rps.png"))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for p, xs in d["cdf"]["ttft_ms"].items():
        if xs:
            ax.plot([x / 1000 for x in xs], [(i + 1) / len(xs) for i in range(len(xs))], label=p)
    ax.set(xscale="log", xlabel="TTFT (s)", ylabel="fraction of requests",
           title=f"TTFT CDF at {d['cdf']['rps']} RPS (SIMULATED, seed {d['cdf']['seed']})")
    ax.legend(fontsize=7)
    written.append(_save(fig, out_dir / "ttft_cdf_high_load.png"))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for p in d["sweep"]["adapter_policies"]:
        pts = [a for a in d["adapters"] if a["policy"] == p]
        ax.errorbar([a["num_adapters"] for a in pts], [a["hit_rate"] for a in pts],
                    yerr=[a["hit_rate_ci"] for a in pts], label=p, marker="o", capsize=2)
    ax.set(xlabel="number of adapters", ylabel="cache hit rate", ylim=(0, 1.05),
           title=f"Hit rate vs adapters at {d['sweep']['adapter_rps']} RPS (SIMULATED)")
    ax.legend(fontsize=7)
    written.append(_save(fig, out_dir / "hit_rate_vs_adapters.png"))
    return written


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path


def write_outputs(res: dict, out_dir: Path, command: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    report = out_dir / "report.md"
    report.write_text(markdown(res, command))
    details = out_dir / "details.json"
    details.write_text(json.dumps({**res, "command": command}, indent=1) + "\n")
    return [report, details] + plots(res, out_dir)
