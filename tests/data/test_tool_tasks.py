"""The rendered zoom task family and its scripted experts."""

import numpy as np
import pytest

from r1v.data.tool_tasks import (
    CELL_NAMES,
    cell_crop_code,
    crop_box,
    expert_turns,
    generate_zoom_tasks,
    look_cell,
    look_tasks,
    make_zoom_task,
    perception_samples,
    render_zoom,
)
from r1v.errors import DataError


def test_deterministic_and_splits_differ():
    a, b = make_zoom_task(5), make_zoom_task(5)
    assert a.meta["scene"] == b.meta["scene"] and a.answer == b.answer
    assert np.array_equal(np.asarray(a.images[0]), np.asarray(render_zoom(a.meta["scene"])))
    train = {repr(s.meta["scene"]) for s in generate_zoom_tasks(20)}
    held = {repr(s.meta["scene"]) for s in generate_zoom_tasks(20, split="heldout")}
    assert not train & held


def test_answer_is_the_named_cell_and_the_crop_contains_it():
    for s in generate_zoom_tasks(12):
        row, col = s.meta["cell"]
        assert CELL_NAMES[row][col] in s.question
        obj = s.meta["scene"]["objects"][row * 3 + col]
        assert obj["kind"] == s.answer
        x0, y0, x1, y1 = s.meta["box"]
        assert x0 + obj["size"] <= obj["x"] <= x1 - obj["size"] and y0 + obj["size"] <= obj["y"] <= y1 - obj["size"]
        assert s.images[0].size == (896, 896)


def test_shape_is_small_in_full_view_but_large_in_the_crop():
    s = make_zoom_task(0)
    radius = s.meta["scene"]["objects"][0]["size"]
    assert radius * 2 * 224 / 896 < 14  # smaller than one 14 px patch at one 224 px tile
    x0, _, x1, _ = crop_box(896, 0, 0)
    assert radius * 2 * 224 / (x1 - x0) > 40


def test_expert_turns_and_flaws():
    s = make_zoom_task(1)
    good = expert_turns(s)
    assert len(good) == 2 and good[1].endswith(f"<answer>{s.answer}</answer>")
    assert CELL_NAMES[s.meta["cell"][0]][s.meta["cell"][1]] in good[0]
    assert len(expert_turns(s, "recrop")) == 3
    assert "box)" in expert_turns(s, "bug")[0]
    with pytest.raises(DataError):
        expert_turns(s, "nope")
    with pytest.raises(DataError):
        make_zoom_task(0, split="test")


@pytest.mark.parametrize("row,col", [(r, c) for r in range(3) for c in range(3)])
def test_cell_crop_code_crops_crop_box(row, col):
    boxes = []

    class Img:
        width = 896

        def crop(self, box):
            boxes.append(box)
            return self

        def resize(self, size):
            return self

    exec(cell_crop_code(row, col), {"image": Img(), "save": lambda im: None})
    assert boxes == [crop_box(896, row, col)]


def test_perception_samples_name_the_zoomed_cells_shape():
    looks = perception_samples(6, size=448)
    assert [x.id for x in looks] == [x.id for x in perception_samples(6, size=448)]  # deterministic
    for look in looks:
        task = make_zoom_task(int(look.id.rsplit("-", 1)[1]), size=448)
        row, col = look.meta["cell"]
        assert look.answer == task.meta["scene"]["objects"][row * 3 + col]["kind"]
        expected = task.images[0].crop(crop_box(448, row, col)).resize((224, 224))
        assert np.array_equal(np.asarray(look.images[0]), np.asarray(expected))
        assert look.messages[-1].role == "assistant" and look.messages[-1].content.endswith(f"<answer>{look.answer}</answer>")
    assert len({x.meta["cell"][0] * 3 + x.meta["cell"][1] for x in perception_samples(20, size=448)}) > 3
    with pytest.raises(DataError):
        perception_samples(-1)


def test_look_tasks_ask_the_look_cell_of_the_same_scene_as_perception_samples():
    tasks, looks = look_tasks(5, size=448), perception_samples(5, size=448)
    for i, (task, look) in enumerate(zip(tasks, looks, strict=True)):
        row, col = look_cell(i)
        plain = make_zoom_task(i, size=448)
        assert task.meta["scene"] == plain.meta["scene"] and task.meta["cell"] == [row, col] == look.meta["cell"]
        assert CELL_NAMES[row][col] in task.messages[0].content and task.answer == look.answer
        assert task.answer == plain.meta["scene"]["objects"][row * 3 + col]["kind"]
        crop = task.images[0].crop(crop_box(448, row, col)).resize((224, 224))
        assert np.array_equal(np.asarray(crop), np.asarray(look.images[0]))
    assert len({tuple(t.meta["cell"]) for t in look_tasks(20, size=448)}) > 3
    with pytest.raises(DataError):
        make_zoom_task(0, size=448, cell=(3, 0))
