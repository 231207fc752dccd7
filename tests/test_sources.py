"""Dataset readers on every real sample in the fixtures, box conventions and bad input.

References: pycocotools' own COCO API (annToMask) for COCO masks, the VOC
SegmentationObject / SegmentationClass PNGs decoded with PIL, the raw JSON / text
annotations, and hand-worked boxes.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from spa_common.errors import SpaError
from spa_data.ratio import object_pixel_ratio
from spa_data.sources import SOURCES, BddSource, CocoSource, TinyImageNetSource, VocSource, open_source

VOC_ROOT = "voc2012/VOCdevkit/VOC2012"


def read_all(source):
    return [source.to_record(item) for item in source.items()]


def decode(rle: dict) -> np.ndarray:
    return mask_utils.decode(rle).astype(bool)


def test_registry_names():
    assert SOURCES == {"coco": CocoSource, "bdd": BddSource, "voc": VocSource, "tiny-imagenet": TinyImageNetSource}
    with pytest.raises(SpaError, match="unknown source 'imagenet'"):
        open_source("imagenet", Path("."), "val")


# ---------------------------------------------------------------- COCO

@pytest.mark.parametrize("sample, ann_name", [("val-2img", "instances_val2017.json"),
                                               ("person-keypoints-4img", "person_keypoints_val2017.json")])
def test_coco_matches_pycocotools(fixtures_dir, sample, ann_name):
    root = fixtures_dir / "coco" / sample
    ann_file = root / "annotations" / ann_name
    coco = COCO(str(ann_file))
    source = open_source("coco", root, "val")
    assert source.annotation_file == ann_file      # keypoints file chosen when it is the only one
    records = read_all(source)
    assert [r.image_id for r in records] == sorted(coco.imgs)
    assert source.category_ids == tuple(sorted(coco.cats))
    assert source.classes == tuple(coco.cats[i]["name"] for i in sorted(coco.cats))
    for record in records:
        img = coco.imgs[record.image_id]
        assert (record.file, record.width, record.height) == (f"val2017/{img['file_name']}", img["width"], img["height"])
        assert (root / record.file).is_file()
        anns = coco.imgToAnns[record.image_id]                             # JSON order, like the record
        assert len(record.objects) == len(anns) and record.skipped == ()
        for ann, obj in zip(anns, record.objects):
            x, y, w, h = ann["bbox"]
            assert obj.box == pytest.approx((x, y, min(x + w, img["width"]), min(y + h, img["height"])))
            assert source.category_ids[obj.category] == ann["category_id"]
            assert np.array_equal(decode(obj.mask), coco.annToMask(ann).astype(bool)), ann["id"]


def test_coco_multipart_polygon_467657(fixtures_dir):
    root = fixtures_dir / "coco" / "person-keypoints-4img"
    coco = COCO(str(root / "annotations" / "person_keypoints_val2017.json"))
    ann = coco.anns[467657]
    assert len(ann["segmentation"]) == 4
    source = open_source("coco", root, "val", annotations="person_keypoints")
    record = next(source.to_record(i) for i in source.items() if i.image_id == ann["image_id"])
    obj = next(o for o in record.objects if o.box[:2] == pytest.approx(tuple(ann["bbox"][:2])))
    parts = [mask_utils.decode(r) for r in mask_utils.frPyObjects(ann["segmentation"], record.height, record.width)]
    assert np.array_equal(decode(obj.mask), np.any(parts, axis=0))   # union of the 4 parts
    with pytest.raises(SpaError, match="no instances_val2017.json"):
        open_source("coco", root, "val", annotations="instances")


def _coco_tree(tmp_path, fixtures_dir, edit) -> Path:
    root = tmp_path / "coco"
    shutil.copytree(fixtures_dir / "coco" / "val-2img", root)
    path = root / "annotations" / "instances_val2017.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return root


def test_coco_degenerate_objects_are_counted(tmp_path, fixtures_dir):
    def edit(data):
        first, second, third, fourth = [a for a in data["annotations"] if a["image_id"] == 37777][:4]
        first["segmentation"] = [[1, 1, 5, 5], first["segmentation"][0]]      # 2-point part dropped
        second["bbox"] = [10, 10, 0, 5]                                     # zero width
        third["bbox"] = [400, 10, 20, 20]                                   # right of the 352 px image
        fourth["bbox"] = [-5, 200, 20, 50]                                  # partly outside: clipped
    root = _coco_tree(tmp_path, fixtures_dir, edit)
    record = next(r for r in read_all(open_source("coco", root, "val")) if r.image_id == 37777)
    assert dict(record.skipped) == {"box_clipped": 1, "box_outside_image": 1, "box_zero_size": 1,
                                    "polygon_part_under_3_points": 1}
    assert len(record.objects) == 14 - 2
    assert any(o.box == (0.0, 200.0, 15.0, 230.0) for o in record.objects)


def test_coco_bad_input(tmp_path, fixtures_dir):
    with pytest.raises(SpaError, match="nope.*not found"):
        open_source("coco", tmp_path / "nope", "val")
    with pytest.raises(SpaError, match="instances_test2017.json"):
        open_source("coco", fixtures_dir / "coco" / "val-2img", "test")
    root = _coco_tree(tmp_path, fixtures_dir, lambda d: d["annotations"][0].update(category_id=999))
    with pytest.raises(SpaError, match=r"instances_val2017\.json: annotation 22328 \(image 37777\): unknown category id 999"):
        open_source("coco", root, "val").items()
    (root / "annotations" / "instances_val2017.json").write_text('{"images": [')
    with pytest.raises(SpaError, match=r"instances_val2017\.json: malformed JSON"):
        open_source("coco", root, "val").items()


def test_coco_missing_image_policy(tmp_path, fixtures_dir):
    root = _coco_tree(tmp_path, fixtures_dir, lambda d: None)
    (root / "val2017" / "000000037777.jpg").unlink()
    with pytest.raises(SpaError, match="000000037777.jpg: image 37777 .* not found"):
        open_source("coco", root, "val").items()
    source = open_source("coco", root, "val", missing_images="skip")
    assert [i.image_id for i in source.items()] == [397133] and source.skipped == {"missing_image": 1}
    assert len(open_source("coco", root, "val", missing_images="keep").items()) == 2


# ---------------------------------------------------------------- VOC

def test_voc_2007_000063_boxes_flags_and_masks(fixtures_dir):
    root = fixtures_dir / VOC_ROOT
    source = open_source("voc", fixtures_dir / "voc2012", "train")   # descends to VOCdevkit/VOC2012
    assert source.root == root
    (record,) = read_all(source)
    assert (record.image_id, record.file, record.width, record.height) == ("2007_000063", "JPEGImages/2007_000063.jpg", 500, 375)
    dog, chair = record.objects
    # XML: dog 123 115 379 275, chair 75 1 428 375 (1-based inclusive)
    assert (source.classes[dog.category], dog.box, dog.truncated, dog.difficult) == ("dog", (122, 114, 379, 275), False, False)
    assert (source.classes[chair.category], chair.box, chair.truncated) == ("chair", (74, 0, 428, 375), True)
    objects_png = np.asarray(Image.open(root / "SegmentationObject" / "2007_000063.png"))
    class_png = np.asarray(Image.open(root / "SegmentationClass" / "2007_000063.png"))
    for k, obj in enumerate(record.objects, 1):
        assert np.array_equal(decode(obj.mask), objects_png == k)
        assert np.all(class_png[decode(obj.mask)] == obj.category + 1)      # VOC class ids are 1-based
    union = decode(dog.mask) | decode(chair.mask)
    assert np.array_equal(union, (class_png > 0) & (class_png < 255))      # 255 (void) is no object


VOC_XML = """<annotation><size><height>{h}</height><width>{w}</width></size>
<object><bndbox><ymin>1.0</ymin><xmin>1</xmin><ymax>3.0</ymax><xmax>3</xmax></bndbox><name>cat</name></object>
{extra}</annotation>"""


def _voc_tree(tmp_path: Path, xml: str, splits: dict | None = None) -> Path:
    root = tmp_path / "VOC2012"
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "Annotations" / "a.xml").write_text(xml)
    Image.new("RGB", (10, 10)).save(root / "JPEGImages" / "a.jpg")
    for split, ids in (splits or {}).items():
        (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


def test_voc_box_convention_and_xml_variants(tmp_path):
    # float coordinates, no truncated/difficult/pose, other element order, unknown extra element
    _voc_tree(tmp_path, VOC_XML.format(h=10, w=10, extra="<object><name>dog</name><extra/>"
              "<bndbox><xmin>8.5</xmin><ymin>9</ymin><xmax>14</xmax><ymax>10</ymax></bndbox></object>"),
              splits={"train": ["a"]})
    (record,) = read_all(open_source("voc", tmp_path, "train"))
    cat, dog = record.objects
    assert cat.box == (0, 0, 3, 3) and not cat.truncated and not cat.difficult
    assert dog.box == (7.5, 8, 10, 10) and dict(record.skipped) == {"box_clipped": 1}
    only_cat = type(record)(record.image_id, record.file, 10, 10, objects=(cat,))
    assert object_pixel_ratio(only_cat, ratio_from="boxes") == (9 / 100, "boxes")  # pixels 0..2 x 0..2


def test_voc_bad_input(tmp_path):
    root = _voc_tree(tmp_path / "unknown", VOC_XML.format(h=10, w=10, extra="").replace("cat", "unicorn"))
    with pytest.raises(SpaError, match=r"a\.xml: object 1: unknown class 'unicorn'"):
        read_all(open_source("voc", root, "train"))
    root = _voc_tree(tmp_path / "broken", "<annotation><size>")
    with pytest.raises(SpaError, match=r"a\.xml: malformed XML"):
        read_all(open_source("voc", root, "train"))
    root = _voc_tree(tmp_path / "split", VOC_XML.format(h=10, w=10, extra=""), splits={"train": ["a"]})
    with pytest.raises(SpaError, match=r"val\.txt: split 'val' not found"):
        open_source("voc", root, "val").items()
    root = _voc_tree(tmp_path / "degenerate", VOC_XML.format(h=10, w=10, extra=(
        "<object><name>dog</name><bndbox><xmin>5</xmin><ymin>5</ymin><xmax>4</xmax><ymax>9</ymax></bndbox></object>"
        "<object><name>dog</name><bndbox><xmin>20</xmin><ymin>5</ymin><xmax>30</xmax><ymax>9</ymax></bndbox></object>")))
    (record,) = read_all(open_source("voc", root, "train"))
    assert len(record.objects) == 1 and dict(record.skipped) == {"box_outside_image": 1, "box_zero_size": 1}


# ---------------------------------------------------------------- BDD100K

def test_bdd_det20(fixtures_dir):
    root = fixtures_dir / "bdd100k" / "bdd100k"
    frames = json.loads((root / "labels" / "det_20" / "det_train.json").read_text())
    (record,) = read_all(open_source("bdd", root, "train"))
    assert (record.image_id, record.file) == ("913b47b8-3cf1b886", "images/100k/train/913b47b8-3cf1b886.jpg")
    assert (record.width, record.height) == (1280, 720)                    # from the image header
    labels = frames[0]["labels"]
    assert len(record.objects) == len(labels) == 10
    for label, obj in zip(labels, record.objects):
        b = label["box2d"]
        assert obj.box == pytest.approx((b["x1"], b["y1"], b["x2"] + 1, b["y2"] + 1))   # x2 - x1 + 1 wide
        assert record_class(obj) == label["category"]
        assert (obj.mask is not None) == ("poly2d" in label)
        if obj.mask is not None:      # rasterised polygon: area within a perimeter of the shoelace area
            xy = np.asarray(label["poly2d"][0]["vertices"])
            shoelace = 0.5 * abs(np.dot(xy[:, 0], np.roll(xy[:, 1], 1)) - np.dot(xy[:, 1], np.roll(xy[:, 0], 1)))
            perimeter = np.linalg.norm(xy - np.roll(xy, 1, axis=0), axis=1).sum()
            assert abs(mask_utils.area(obj.mask) - shoelace) <= perimeter
    assert object_pixel_ratio(record)[1] == "boxes"                        # only 4 of 10 have masks


def record_class(obj) -> str:
    return BddSource.classes[obj.category]


def test_bdd_ins_seg_rle_frames_container(fixtures_dir):
    root = fixtures_dir / "bdd100k" / "labels-only" / "scalabel"
    labels = "labels/ins_seg/rles/ins_seg_rle_sample.json"
    with pytest.raises(SpaError, match="80985724-bc3fece0.jpg: image of frame .* not found"):
        open_source("bdd", root, "val", labels=labels).items()
    source = open_source("bdd", root, "val", labels=labels, missing_images="keep")
    assert source.image_dir == "images/10k/val"
    frames = json.loads((root / labels).read_text())["frames"]
    records = read_all(source)
    assert [r.image_id for r in records] == sorted(Path(f["name"]).stem for f in frames)
    for frame in frames:
        record = next(r for r in records if r.file.endswith(frame["name"]))
        assert (record.width, record.height) == (1280, 720)                # from the RLE size
        assert [o.mask["counts"] for o in record.objects] == [l["rle"]["counts"] for l in frame["labels"]]
        assert [record_class(o) for o in record.objects] == [l["category"] for l in frame["labels"]]
        assert object_pixel_ratio(record)[1] == "masks"


def test_bdd_ins_seg_bitmask(fixtures_dir):
    root = fixtures_dir / "bdd100k" / "labels-only" / "bdd100k-repo"
    source = open_source("bdd", root, "val", labels="labels/ins_seg/bitmasks", missing_images="keep")
    (record,) = read_all(source)
    rgba = np.asarray(Image.open(root / "labels" / "ins_seg" / "bitmasks" / "0.png")).astype(np.int64)
    instance = rgba[..., 2] * 256 + rgba[..., 3]
    ids, counts = np.unique(instance[instance > 0], return_counts=True)
    assert (record.file, record.width, record.height) == ("images/10k/val/0.jpg", 1280, 720)
    assert [int(mask_utils.area(o.mask)) for o in record.objects] == counts.tolist()   # ids here have G = 0
    for obj, instance_id in zip(record.objects, ids):
        pixels = instance == instance_id
        assert np.array_equal(decode(obj.mask), pixels)
        assert record_class(obj) == ("pedestrian", "rider", "car", "truck", "bus")[rgba[..., 0][pixels][0] - 1]
        ys, xs = np.nonzero(pixels)
        assert obj.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) and not obj.iscrowd
    assert object_pixel_ratio(record) == ((rgba[..., 0] > 0).mean(), "masks")


def test_bdd_old_file_and_name_mapping(fixtures_dir, tmp_path):
    root = fixtures_dir / "bdd100k" / "labels-only" / "bdd100k-repo"
    frames = json.loads((root / "labels" / "unitest_val_bdd.json").read_text())
    (record,) = read_all(open_source("bdd", root, "val", labels="labels/unitest_val_bdd.json", missing_images="keep"))
    assert (record.width, record.height) == (1280, 720) and record.image_id == "b1c66a42-6f7d68ca"
    assert [record_class(o) for o in record.objects] == [l["category"] for l in frames[0]["labels"]]

    old = [{"name": "x.jpg", "labels": [
        {"id": 1, "category": "person", "box2d": {"x1": 0, "y1": 0, "x2": 2, "y2": 2}},
        {"id": 2, "category": "bike", "box2d": {"x1": 1, "y1": 1, "x2": 5, "y2": 5}},
        {"id": 3, "category": "motor", "box2d": {"x1": 1, "y1": 1, "x2": 5, "y2": 5}},
        {"id": 4, "category": "other vehicle", "box2d": {"x1": 1, "y1": 1, "x2": 5, "y2": 5}},
        {"id": 5, "category": "lane/single white", "poly2d": [{"vertices": [[0, 0], [5, 5]], "types": "LL", "closed": False}]},
        {"id": 6, "category": "car", "poly2d": [{"vertices": [[0, 0], [4, 0], [4, 4], [0, 4]], "types": "LCCL", "closed": True}]},
        {"id": 7, "category": "car", "poly2d": [{"vertices": [[0, 0], [4, 0]], "types": "LL", "closed": True}]},
        {"id": 8, "category": "car", "box2d": {"x1": 20, "y1": 0, "x2": 30, "y2": 5}},
    ]}, {"name": "y.jpg"}]
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "bdd100k_labels_images_val.json").write_text(json.dumps(old))
    (tmp_path / "images" / "100k" / "val").mkdir(parents=True)
    for name in ("x.jpg", "y.jpg"):
        Image.new("RGB", (16, 9)).save(tmp_path / "images" / "100k" / "val" / name)
    source = open_source("bdd", tmp_path, "val")
    x, y = read_all(source)
    assert source.skipped == {} and y.objects == ()
    assert dict(x.skipped) == {"box_outside_image": 1, "not_an_object": 1, "polygon_part_under_3_points": 1}
    assert [record_class(o) for o in x.objects] == ["pedestrian", "bicycle", "motorcycle", "car", "car"]
    assert [o.iscrowd for o in x.objects] == [False, False, False, True, False]
    assert x.objects[0].box == (0, 0, 3, 3)                                 # box2d 0..2 is 3 px wide
    assert x.objects[4].box == (0, 0, 4, 4) and mask_utils.area(x.objects[4].mask) == 16
    # boxes: cols/rows 0..2, 1..5 (x3) and 0..3: union = 5x5 + 4x4 - 3x3 overlap = 32 of 16x9 pixels
    assert object_pixel_ratio(x, ratio_from="boxes") == (32 / (16 * 9), "boxes")


def test_bdd_bad_input(tmp_path):
    (tmp_path / "labels" / "det_20").mkdir(parents=True)
    with pytest.raises(SpaError, match="no BDD100K label file for split 'train'"):
        open_source("bdd", tmp_path, "train")
    (tmp_path / "labels" / "det_20" / "det_train.json").write_text('[{"name": "a.jpg", "labels": [')
    with pytest.raises(SpaError, match=r"det_train\.json: malformed JSON"):
        open_source("bdd", tmp_path, "train").items()
    (tmp_path / "labels" / "det_20" / "det_train.json").write_text(json.dumps(
        [{"name": "a.jpg", "labels": [{"id": "7", "category": "spaceship", "box2d": {"x1": 0, "y1": 0, "x2": 1, "y2": 1}}]}]))
    with pytest.raises(SpaError, match=r"det_train\.json: frame a\.jpg label 7: unknown category 'spaceship'"):
        open_source("bdd", tmp_path, "train", missing_images="keep").items()


# ---------------------------------------------------------------- Tiny ImageNet

def test_tiny_imagenet_train(fixtures_dir):
    root = fixtures_dir / "tiny-imagenet-200"
    wnids = (root / "wnids.txt").read_text().split()
    with pytest.raises(SpaError, match=r"_boxes\.txt: annotation file not found"):
        open_source("tiny-imagenet", root, "train").items()            # 198 classes are not in the sample
    source = open_source("tiny-imagenet", root, "train", missing_images="skip")
    records = read_all(source)
    assert len(records) == 1000 and source.skipped == {"missing_class": 198}
    assert source.classes == tuple(wnids) and source.class_words[wnids.index("n01443537")].startswith("goldfish")
    by_id = {r.image_id: r for r in records}
    whole = by_id["n01443537_2"]                                        # boxes.txt: 0 0 63 63
    assert whole.label == wnids.index("n01443537") == whole.objects[0].category
    assert (whole.width, whole.height, whole.objects[0].box) == (64, 64, (0, 0, 64, 64))
    assert object_pixel_ratio(whole) == (1.0, "boxes")
    thin = by_id["n01443537_425"]                                       # boxes.txt: 9 63 18 63 (one row)
    assert thin.objects[0].box == (9, 63, 19, 64) and object_pixel_ratio(thin)[0] == 10 / 64 ** 2
    assert object_pixel_ratio(whole, canvas=(128, 128))[0] == 0.25


def test_tiny_imagenet_val(fixtures_dir):
    root = fixtures_dir / "tiny-imagenet-200"
    wnids = (root / "wnids.txt").read_text().split()
    listed = {line.split("\t")[0]: line.split("\t")[1] for line in (root / "val" / "val_annotations.txt").read_text().splitlines()}
    with pytest.raises(SpaError, match=r"val_0\.JPEG: image listed in .*val_annotations\.txt line 1 not found"):
        open_source("tiny-imagenet", root, "val").items()
    source = open_source("tiny-imagenet", root, "val", missing_images="skip")
    records = read_all(source)
    assert len(records) == 100 and source.skipped == {"missing_image": 9900}
    for record in records:
        assert record.label == wnids.index(listed[Path(record.file).name])
        assert (root / record.file).is_file() and (record.width, record.height) == (64, 64)
    with pytest.raises(SpaError, match="split 'test'"):
        open_source("tiny-imagenet", root, "test")


def test_tiny_imagenet_unknown_wnid(tmp_path, fixtures_dir):
    root = tmp_path / "tiny"
    (root / "val" / "images").mkdir(parents=True)
    shutil.copy(fixtures_dir / "tiny-imagenet-200" / "wnids.txt", root / "wnids.txt")
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99999999\t0\t0\t63\t63\n")
    with pytest.raises(SpaError, match=r"val_annotations\.txt: line 1 \(val_0\.JPEG\): unknown wnid n99999999"):
        open_source("tiny-imagenet", root, "val").items()
