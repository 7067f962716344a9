"""genmodels: data generators, the quick zoo build, the torch-free runtime, calibration."""

import io
import json
import shutil
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import yaml

from genmodels.data import defect_images, reports
from genmodels.png import decode_png, encode_png
from genmodels.runtime import ImageGenerator, ModelFileError, TextGenerator, load_catalog, open_model, sha256_file
from genmodels.tokens import Vocab, split
from policies.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*argv) -> str:
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert cli_main(list(argv)) == 0
    return buf.getvalue()


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    pytest.importorskip("torch")
    out = tmp_path_factory.mktemp("zoo")
    text = run_cli("models", "build", "--out", str(out), "--quick", "--seed", "3")
    assert "catalog.yaml" in text
    return out


def entry(zoo, name):
    return next(e for e in load_catalog(zoo) if e["name"] == name)


# -- data ---------------------------------------------------------------------------------------
def test_defect_images_deterministic_per_seed():
    a, la = defect_images(12, seed=5)
    b, lb = defect_images(12, seed=5)
    c, _ = defect_images(12, seed=6)
    assert a.shape == (12, 32, 32) and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    assert np.array_equal(a, b) and np.array_equal(la, lb) and not np.array_equal(a, c)
    assert np.bincount(la, minlength=3).tolist() == [4, 4, 4]


def test_reports_deterministic_and_tokenizable():
    r = reports(20, seed=3)
    assert r == reports(20, seed=3) and r != reports(20, seed=4)
    assert all(t.startswith(("Report line", "Line", "Shift report")) and "Scrap" in t for t in r)
    v = Vocab.from_texts(r)
    for t in r:
        assert v.decode(v.encode(t)) == t
    with pytest.raises(ValueError, match="vocabulary"):
        v.encode("Zyzzyva")
    assert split("Line 12, 3.5 %") == ["Line", " 1", "2", ",", " 3", ".", "5", " %"]


def test_png_roundtrip():
    img = (np.arange(32 * 20) % 251).astype(np.uint8).reshape(20, 32)
    data = encode_png(img)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert np.array_equal(decode_png(data), img)


# -- quick build, catalog -------------------------------------------------------------------------
def test_quick_build_catalog_matches_files(zoo):
    entries = load_catalog(zoo)
    assert [e["name"] for e in entries] == ["report-s", "report-m", "report-l", "report-xl",
                                            "defect-s", "defect-m", "defect-l", "defect-xl"]
    for e in entries:
        assert e["path"].stat().st_size == e["size_bytes"]
        assert sha256_file(e["path"]) == e["sha256"]
        assert e["kind"] == ("text" if e["name"].startswith("report") else "image")
    prov = json.loads((zoo / "provenance.json").read_text())
    assert prov["quick"] and prov["seed"] == 3 and len(prov["models"]) == 8
    assert all(np.isfinite(m["final_loss"]) for m in prov["models"])
    # the cloud model server accepts the catalog as it is
    mc = pytest.importorskip("aigc_offload.model_catalog")
    assert len(mc.ModelCatalog.load(zoo)) == 8


# -- runtime -------------------------------------------------------------------------------------
def test_image_generator(zoo):
    g = open_model(entry(zoo, "defect-s"))
    assert isinstance(g, ImageGenerator) and g.classes == ["scratch", "spot", "crack"]
    for steps in (1, 3):
        img = g.generate("crack", steps=steps, seed=1)
        assert img.shape == (32, 32) and img.dtype == np.uint8
        assert g.last.units == steps and g.last.unit == "step" and g.last.wall_s > 0
    assert np.array_equal(g.generate(2, 3, seed=1), img)
    assert np.array_equal(decode_png(g.png(img)), img)
    with pytest.raises(ValueError, match="unknown defect class"):
        g.generate("dent", 2, 0)


def test_text_generator(zoo):
    g = open_model(entry(zoo, "report-m"))
    assert isinstance(g, TextGenerator)
    out = g.generate("Report line 2,", max_tokens=20, seed=0, temperature=0.8)
    assert out.startswith("Report line 2,") and len(out) > len("Report line 2,")
    assert g.last.units == 20 and g.last.unit == "token"
    assert g.generate("Report line 2,", 20, 0, 0.8) == out
    g.generate("", 0, 0)
    assert g.last.units == 0


def test_runtime_imports_without_torch():
    code = "import genmodels.runtime, sys; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


def test_corrupted_model_is_refused(zoo, tmp_path):
    e = entry(zoo, "defect-s")
    bad = tmp_path / "defect-s.onnx"
    data = bytearray(e["path"].read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="sha256 .* refusing to load"):
        ImageGenerator(bad, sha256=e["sha256"], size_bytes=e["size_bytes"])
    with pytest.raises(ModelFileError, match="bytes, the manifest says"):
        ImageGenerator(bad, sha256=e["sha256"], size_bytes=e["size_bytes"] + 1)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not an onnx model")
    with pytest.raises(ModelFileError, match="not a loadable ONNX model"):
        TextGenerator(garbage)
    with pytest.raises(ModelFileError, match="not a genmodels text model"):
        TextGenerator(e["path"])  # an image model opened as text


def test_calibrate_json_and_write(zoo, tmp_path):
    preset = tmp_path / "factory.yaml"
    shutil.copy(ROOT / "policies" / "presets" / "factory.yaml", preset)
    res = json.loads(run_cli("models", "calibrate", "--zoo", str(zoo), "--json", "--repeats", "2",
                             "--clock-ghz", "2.5", "--preset", str(preset), "--write"))
    assert res["clock_source"] == "--clock-ghz" and res["clock_ghz"] == 2.5
    assert set(res["models"]) == {f"{k}-{t}" for k in ("report", "defect") for t in ("s", "m", "l", "xl")}
    for r in res["models"].values():
        assert r["s_per_unit_median"] > 0 and r["s_per_unit_p90"] >= r["s_per_unit_median"]
        assert r["gcycles_per_unit"] == pytest.approx(r["s_per_unit_median"] * 2.5)
    text = preset.read_text()
    assert "measured by `aigc-offload models calibrate`" in text and "w_latency: 0.5" in text
    doc = yaml.safe_load(text)
    for m in doc["models"]:
        assert m["gcycles_per_unit"] == pytest.approx(res["models"][m["name"]]["gcycles_per_unit"], rel=5e-3)
    from policies.config import load_preset

    assert load_preset(str(preset)).models[0].name == "report-s"
    # a second write replaces the header instead of stacking another one
    run_cli("models", "calibrate", "--zoo", str(zoo), "--repeats", "1", "--clock-ghz", "2.5",
            "--preset", str(preset), "--write")
    assert preset.read_text().count("measured by `aigc-offload models calibrate`") == 1


def test_broken_catalog_and_metadata_are_model_file_errors(zoo, tmp_path, capsys):
    import onnx

    bad_zoo = tmp_path / "zoo"
    bad_zoo.mkdir()
    catalog = bad_zoo / "catalog.yaml"
    full = (zoo / "catalog.yaml").read_text()
    for text, match in ((full[: len(full) // 2] + "\n  - {name: [", "not valid YAML"),
                        ("models:\n  - {name: report-s, kind: text}\n", "must be a mapping with a 'file'"),
                        ("models:\n  - just-a-string\n", "must be a mapping with a 'file'")):
        catalog.write_text(text)
        with pytest.raises(ModelFileError, match=match):
            load_catalog(bad_zoo)
        capsys.readouterr()
        assert cli_main(["models", "calibrate", "--zoo", str(bad_zoo), "--repeats", "1", "--clock-ghz", "2.5"]) == 2
        assert match in capsys.readouterr().err
    e = entry(zoo, "defect-s")
    with pytest.raises(ModelFileError, match="lacks 'sha256'"):
        open_model({k: v for k, v in e.items() if k != "sha256"})
    # a genmodels-tagged ONNX file without (or with incomplete) genmodels.config metadata
    for props, match in (({"genmodels.kind": "image"}, "no 'genmodels.config' metadata"),
                         ({"genmodels.kind": "image", "genmodels.config": "{not json"}, "not JSON"),
                         ({"genmodels.kind": "image", "genmodels.config": "{}"}, "lacks 'classes'")):
        model = onnx.load(str(e["path"]))
        del model.metadata_props[:]
        onnx.helper.set_model_props(model, props)
        path = tmp_path / "nometa.onnx"
        onnx.save(model, str(path))
        with pytest.raises(ModelFileError, match=match):
            ImageGenerator(path)
