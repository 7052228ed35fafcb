import pytest

from invisible_face.data.labels import LabelError, age_bin, parse_utkface_name

EDGES = [0, 20, 40, 60, 80]


def test_parses_a_good_name():
    label = parse_utkface_name("26_1_2_20170116174525125.jpg.chip.jpg")
    assert (label.age, label.gender, label.race) == (26, 1, 2)


@pytest.mark.parametrize("name", [
    "39_1_20170116174525125.jpg.chip.jpg",      # race missing (as in UTKFace)
    "61_1_20170109150557335.jpg.chip.jpg",
    "x_1_2_20170116174525125.jpg.chip.jpg",     # age not a number
    "26_1_2_20170116174525125.jpg",             # not a chip name
    "26_1_2.jpg.chip.jpg",                      # no timestamp
    "",
])
def test_malformed_names_raise(name):
    with pytest.raises(LabelError):
        parse_utkface_name(name)


@pytest.mark.parametrize("age,expected", [(0, 0), (19, 0), (20, 1), (39, 1), (40, 2), (79, 3), (80, 4), (116, 4)])
def test_age_bins(age, expected):
    assert age_bin(age, EDGES) == expected


def test_age_below_first_edge_raises():
    with pytest.raises(LabelError):
        age_bin(-1, EDGES)
