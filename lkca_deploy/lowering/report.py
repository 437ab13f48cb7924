"""What a lowering did, conv by conv: the report every rule writes into and `lower`/`export` print."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class NodeChange:
    """What a pass did to one grouped conv."""

    node: str
    action: str  # "lowered" | "skipped"
    strategy: str
    reason: str
    kernel: tuple[int, int] | None = None
    new_kernel: tuple[int, int] | None = None  # crop: the cropped kernel; tiled: the largest tile
    tiles: int | None = None
    heads: int | None = None  # matmul: distinct kernel blocks, the Toeplitz's first dimension
    weight_bytes: int = 0  # bytes of the constants this rewrite added


@dataclass
class LoweringReport:
    strategy: str
    changes: list[NodeChange] = field(default_factory=list)
    extra_weight_bytes: int = 0  # constants after minus before (negative when crop shrinks the kernels)

    @property
    def lowered(self) -> list[NodeChange]:
        return [c for c in self.changes if c.action == "lowered"]

    @property
    def skipped(self) -> list[NodeChange]:
        return [c for c in self.changes if c.action == "skipped"]

    @property
    def nothing_lowered(self) -> bool:
        return not self.lowered

    def summary(self) -> str:
        """One line for humans: what was lowered, or plainly that nothing was and why."""
        if not self.changes:
            return "nothing to lower: the model has no grouped or depthwise Conv"
        if self.nothing_lowered:
            reasons = sorted({c.reason for c in self.changes})
            return f"nothing to lower: {len(self.changes)} grouped conv(s) skipped ({'; '.join(reasons)})"
        return (
            f"{self.strategy}: lowered {len(self.lowered)} of {len(self.changes)} grouped conv(s), "
            f"{_signed_bytes(self.extra_weight_bytes)} of weights"
        )

    def to_dict(self) -> dict:
        return {
            "strategy": self.strategy,
            "lowered": len(self.lowered),
            "skipped": len(self.skipped),
            "extra_weight_bytes": self.extra_weight_bytes,
            "summary": self.summary(),
            "changes": [asdict(c) for c in self.changes],
        }


def format_bytes(n_bytes: float) -> str:
    """MiB, or KiB below 0.1 MiB so small figures do not print as 0.0."""
    if 0 < abs(n_bytes) < 0.1 * 2**20:
        return f"{n_bytes / 2**10:.1f} KiB"
    return f"{n_bytes / 2**20:.1f} MiB"


def kxk(pair: tuple[int, int]) -> str:
    return f"{pair[0]}x{pair[1]}"


def _signed_bytes(n_bytes: int) -> str:
    return ("+" if n_bytes >= 0 else "-") + format_bytes(abs(n_bytes))
