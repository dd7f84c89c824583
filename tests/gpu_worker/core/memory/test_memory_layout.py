import pytest

from gpu_worker.core.memory import (AdapterShape, LoraModuleShape, PageGeometry, layout_adapter,
                                    pages_needed)

LLAMA_ATTN = {m: (4096, 4096) for m in ("q_proj", "k_proj", "v_proj", "o_proj")}


def all_slots(layout, shape):
    out = {}
    for layer in range(shape.num_layers):
        for m in shape.modules_in(layer):
            for mat, width in (("A", m.in_features), ("B", m.out_features)):
                slots = layout.slots(layer, m.name, mat)
                assert len(slots) == m.rank
                out[(layer, m.name, mat)] = slots
    return out


@pytest.mark.parametrize("rank,pages", [(8, 2), (16, 4), (32, 8), (64, 16), (128, 32)])
def test_llama7b_attention_adapter_takes_rank_over_four_pages(rank, pages):
    geom = PageGeometry.for_kv_block(block_size=16, kv_dim=4096, row_width=4096)
    assert geom.rows_per_page == 32
    shape = AdapterShape.uniform(32, rank, LLAMA_ATTN)
    assert pages_needed(geom, shape) == pages
    assert shape.weight_elements() * 2 == rank * 2 * 2**20  # fp16 bytes: r * 2 MiB


def test_every_row_gets_its_own_slot_inside_the_adapters_pages():
    geom = PageGeometry(rows_per_page=5, row_width=11008)
    shape = AdapterShape(3, (
        LoraModuleShape("q_proj", 3, 4096, 4096),
        LoraModuleShape("down_proj", 4, 11008, 4096, layers=(0, 2)),
    ))
    layout = layout_adapter(geom, shape)
    # layers 0 and 2 hold 2*3 + 2*4 = 14 rows -> 3 pages; layer 1 holds 6 rows
    assert layout.num_pages == 3
    by_layer: dict[int, list] = {}
    for (layer, _, _), slots in all_slots(layout, shape).items():
        by_layer.setdefault(layer, []).extend(slots)
        assert all(0 <= p < layout.num_pages and 0 <= o < geom.rows_per_page for p, o in slots)
    for layer, slots in by_layer.items():
        assert len(slots) == len(set(slots)), f"two rows share a slot in layer {layer}"
    assert (1, "down_proj", "A") not in layout.runs


def test_pool_rows_map_page_indices_to_global_rows():
    geom = PageGeometry(rows_per_page=4, row_width=8)
    shape = AdapterShape(1, (LoraModuleShape("q", 3, 8, 8),))
    layout = layout_adapter(geom, shape)  # 6 rows -> 2 pages: A in page 0, B spans pages 0 and 1
    assert layout.slots(0, "q", "A") == [(0, 0), (0, 1), (0, 2)]
    assert layout.slots(0, "q", "B") == [(0, 3), (1, 0), (1, 1)]
    assert layout.pool_rows([7, 2], 0, "q", "B") == [7 * 4 + 3, 2 * 4 + 0, 2 * 4 + 1]
    with pytest.raises(ValueError):
        layout.pool_rows([7], 0, "q", "B")


def test_rows_wider_than_a_page_are_rejected():
    shape = AdapterShape.uniform(2, 8, {"down_proj": (11008, 4096)})
    with pytest.raises(ValueError, match="at least as wide"):
        layout_adapter(PageGeometry(2, 4096), shape)


def test_wide_rows_take_consecutive_slots_and_never_straddle_a_page():
    # SmolLM2-like widths: slots of 192 elements; q rows take 3 slots, MLP rows 8
    geom = PageGeometry(rows_per_page=32, row_width=192)
    shape = AdapterShape(1, (LoraModuleShape("q_proj", 5, 576, 576),
                             LoraModuleShape("down_proj", 3, 1536, 576)))
    layout = layout_adapter(geom, shape)
    used: set[tuple[int, int]] = set()
    for m in shape.modules:
        for mat, width in (("A", m.in_features), ("B", m.out_features)):
            k = geom.slots_for(width)
            for page, off in layout.slots(0, m.name, mat):
                assert off + k <= geom.rows_per_page, "a row straddles a page"
                cells = {(page, off + i) for i in range(k)}
                assert not cells & used, "two rows share a slot"
                used |= cells
    # q: 10 rows x 3 slots = 30 of page 0; down A: 3 rows x 8 slots do not fit the 2 left -> page 1
    # (24 slots); down B: 2 rows x 3 slots fill page 1 to 30, the third goes to page 2
    assert layout.slots(0, "q_proj", "A")[:2] == [(0, 0), (0, 3)]
    assert layout.slots(0, "down_proj", "A") == [(1, 0), (1, 8), (1, 16)]
    assert layout.slots(0, "down_proj", "B") == [(1, 24), (1, 27), (2, 0)]
    assert layout.num_pages == pages_needed(geom, shape) == 3
    # versus one 1536-wide slot per row: 16 rows at 4 per page = 4 pages
    assert pages_needed(PageGeometry(4, 1536), shape) == 4


@pytest.mark.parametrize("make", [
    lambda: PageGeometry(0, 4),
    lambda: PageGeometry.for_kv_block(1, 4, 16),  # a page of 8 elements cannot hold a 16-wide row
    lambda: LoraModuleShape("q", 0, 4, 4),
    lambda: AdapterShape(2, ()),
    lambda: AdapterShape(2, (LoraModuleShape("q", 1, 4, 4), LoraModuleShape("q", 1, 4, 4))),
    lambda: AdapterShape(2, (LoraModuleShape("q", 1, 4, 4, layers=(2,)),)),
])
def test_invalid_geometry_and_shapes_raise(make):
    with pytest.raises(ValueError):
        make()
