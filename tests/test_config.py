"""Recipe parsing (edgekd.config): how sections and their defaults combine."""


def test_a_partial_train_mapping_keeps_the_sections_defaults():
    from edgekd.config import Recipe, parse_recipe

    default = Recipe()
    r = parse_recipe({"distill": {"train": {"precision": "bf16"}}, "teacher": {"train": {"epochs": 2}}})
    assert r.distill.train.precision == "bf16"
    assert (r.distill.train.lr, r.distill.train.epochs) == (default.distill.train.lr, default.distill.train.epochs)
    assert r.teacher.train.epochs == 2
    assert (r.teacher.train.lr, r.teacher.train.augment) == (default.teacher.train.lr, default.teacher.train.augment)
    assert r.quantize.train.schedule == default.quantize.train.schedule == "cosine"
