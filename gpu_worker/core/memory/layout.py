"""Where an adapter's LoRA rows live inside the unified page pool.

A page is one KV block: `block_size` tokens of K and V in every layer. Seen from
the LoRA side, the page's storage in one layer is `rows_per_page` slots of
`row_width` elements each (S-LoRA's "slot"). A LoRA row of L elements takes
ceil(L / row_width) consecutive slots of one page, so rows never straddle pages
and, with `row_width` chosen to divide every row length, no element is wasted
inside a row: narrow rows (q/k/v) and wide rows (MLP) share pages without
padding every row to the longest.

For each target module of a rank-r adapter, A (r x in) contributes r rows of
length `in` and B^T (r x out) r rows of length `out`. Per layer the rows are
packed in module order, A before B, into consecutive slots, moving on to the
next page when a row does not fit in the current one. An adapter owns whole
pages in every layer, so its page count is the largest per-layer page count.
Everything here is plain Python: the worker maps the adapter's page indices to
pool page ids and gathers rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field

MATRICES = ("A", "B")


@dataclass(frozen=True)
class PageGeometry:
    """One page's storage in one layer, seen as `rows_per_page` slots of `row_width` elements."""

    rows_per_page: int
    row_width: int

    def __post_init__(self) -> None:
        if self.rows_per_page <= 0 or self.row_width <= 0:
            raise ValueError(f"rows_per_page and row_width must be positive, got {self}")

    def slots_for(self, row_len: int) -> int:
        """Consecutive slots one row of `row_len` elements occupies."""
        return -(-row_len // self.row_width)

    @classmethod
    def for_kv_block(cls, block_size: int, kv_dim: int, row_width: int) -> PageGeometry:
        """The row slots of a KV block holding K and V for `block_size` tokens of width `kv_dim`."""
        if block_size <= 0 or kv_dim <= 0 or row_width <= 0:
            raise ValueError("block_size, kv_dim and row_width must be positive")
        rows = (2 * block_size * kv_dim) // row_width
        if rows == 0:
            raise ValueError(f"a row of {row_width} elements does not fit a page of "
                             f"{2 * block_size * kv_dim} elements")
        return cls(rows, row_width)


@dataclass(frozen=True)
class LoraModuleShape:
    """One target module of an adapter; `layers=None` means every layer."""

    name: str
    rank: int
    in_features: int
    out_features: int
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("module name must not be empty")
        if self.rank <= 0 or self.in_features <= 0 or self.out_features <= 0:
            raise ValueError(f"rank and features must be positive: {self}")

    @property
    def rows_per_layer(self) -> int:
        return 2 * self.rank


@dataclass(frozen=True)
class AdapterShape:
    num_layers: int
    modules: tuple[LoraModuleShape, ...]

    def __post_init__(self) -> None:
        if self.num_layers <= 0:
            raise ValueError("num_layers must be positive")
        if not self.modules:
            raise ValueError("an adapter needs at least one target module")
        for layer in range(self.num_layers):
            names = [m.name for m in self.modules_in(layer)]
            if len(names) != len(set(names)):
                raise ValueError(f"module names repeat in layer {layer}: {names}")
        for m in self.modules:
            if m.layers is not None and any(not 0 <= l < self.num_layers for l in m.layers):
                raise ValueError(f"module {m.name} targets layers outside 0..{self.num_layers - 1}")

    def modules_in(self, layer: int) -> list[LoraModuleShape]:
        return [m for m in self.modules if m.layers is None or layer in m.layers]

    @property
    def max_row_len(self) -> int:
        return max(max(m.in_features, m.out_features) for m in self.modules)

    def weight_elements(self) -> int:
        """Elements of A and B over all layers (what crosses PCIe when it loads)."""
        return sum(m.rank * (m.in_features + m.out_features)
                   for layer in range(self.num_layers) for m in self.modules_in(layer))

    @classmethod
    def uniform(cls, num_layers: int, rank: int, module_dims: dict[str, tuple[int, int]]) -> AdapterShape:
        """Same rank and modules in every layer; `module_dims` maps name -> (in, out)."""
        return cls(num_layers, tuple(LoraModuleShape(n, rank, i, o) for n, (i, o) in module_dims.items()))


@dataclass(frozen=True)
class RowRun:
    """Rows first_row .. first_row+count-1 of one matrix, back to back in one page: row
    first_row + i starts at slot offset + i * slots_per_row."""

    page_index: int
    offset: int
    first_row: int
    count: int
    slots_per_row: int = 1


@dataclass
class AdapterLayout:
    geometry: PageGeometry
    num_pages: int
    # (layer, module name, "A" | "B") -> runs in row order
    runs: dict[tuple[int, str, str], list[RowRun]] = field(default_factory=dict)

    def slots(self, layer: int, module: str, matrix: str) -> list[tuple[int, int]]:
        """(page_index, offset) of every row of one matrix, in row order."""
        return [(r.page_index, r.offset + i * r.slots_per_row) for r in self.runs[(layer, module, matrix)]
                for i in range(r.count)]

    def pool_rows(self, page_ids: list[int], layer: int, module: str, matrix: str) -> list[int]:
        """Global row indices when the layer's pool is viewed as (num_pages * rows_per_page, row_width)."""
        if len(page_ids) != self.num_pages:
            raise ValueError(f"layout needs {self.num_pages} pages, got {len(page_ids)}")
        rpp = self.geometry.rows_per_page
        return [page_ids[p] * rpp + off for p, off in self.slots(layer, module, matrix)]


def _pack_layer(geometry: PageGeometry, modules: list[LoraModuleShape]
                ) -> tuple[int, dict[tuple[str, str], list[RowRun]]]:
    """(pages used, runs per (module, matrix)) for one layer's rows."""
    rpp = geometry.rows_per_page
    page, slot = 0, 0  # next free slot
    runs: dict[tuple[str, str], list[RowRun]] = {}
    for m in modules:
        for matrix, row_len in zip(MATRICES, (m.in_features, m.out_features)):
            k = geometry.slots_for(row_len)
            out: list[RowRun] = []
            row = 0
            while row < m.rank:
                fit = (rpp - slot) // k
                if fit == 0:  # the row does not fit in what is left of this page
                    page, slot = page + 1, 0
                    continue
                count = min(m.rank - row, fit)
                out.append(RowRun(page, slot, row, count, k))
                row += count
                slot += count * k
            runs[(m.name, matrix)] = out
    return page + (1 if slot else 0), runs


def pages_needed(geometry: PageGeometry, shape: AdapterShape) -> int:
    return max(_pack_layer(geometry, shape.modules_in(layer))[0] for layer in range(shape.num_layers))


def layout_adapter(geometry: PageGeometry, shape: AdapterShape) -> AdapterLayout:
    """Pack every row of the adapter into its pages; raises ValueError if a row is wider than a page."""
    if geometry.slots_for(shape.max_row_len) > geometry.rows_per_page:
        raise ValueError(f"longest row has {shape.max_row_len} elements but a page holds "
                         f"{geometry.rows_per_page * geometry.row_width}: pages must be at least as "
                         f"wide as the longest row")
    layout = AdapterLayout(geometry, 0)
    for layer in range(shape.num_layers):
        used, runs = _pack_layer(geometry, shape.modules_in(layer))
        layout.num_pages = max(layout.num_pages, used)
        for (name, matrix), r in runs.items():
            layout.runs[(layer, name, matrix)] = r
    return layout
