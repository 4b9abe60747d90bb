"""The HTML gallery: self-contained (only embedded images), escaped, reusable as a fragment."""

import os
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.refs += [v for k, v in attrs if k in ("src", "href", "srcset", "data")]


def _refs(html_text):
    p = _Refs()
    p.feed(html_text)
    return p


def _referenced_files_exist(page_path, refs):
    folder = os.path.dirname(os.path.abspath(page_path))
    for r in refs:
        if r.startswith("data:"):
            continue
        assert "://" not in r, f"network reference {r}"
        assert os.path.isfile(os.path.join(folder, r)), f"missing file {r}"


@pytest.fixture()
def thumbs(tmp_path):
    paths = []
    for i, colour in enumerate([(200, 0, 0), (0, 200, 0), (0, 0, 200)]):
        p = tmp_path / f"t{i}.jpg"
        Image.new("RGB", (50, 40), colour).save(p)
        paths.append(str(p))
    return paths


def _results(thumbs, missing):
    res = [
        {
            "rank": i + 1,
            "asin": f"B{i:09d}",
            "title": f"Dress {i} <script>alert(1)</script>",
            "label": "dress",
            "similarity": 0.9 - 0.1 * i,
            "thumb": t,
            "image_url": f"https://example.com/{i}.jpg",
        }
        for i, t in enumerate(thumbs)
    ]
    res.append(
        {
            "rank": 4,
            "asin": "BMISSING00",
            "title": "no picture",
            "label": "hat",
            "similarity": 0.2,
            "thumb": missing,
            "image_url": "",
        }
    )
    return res


def test_page_references_only_files_that_exist(tmp_path, thumbs):
    from amazon_visual.web.gallery import write_gallery

    page = str(tmp_path / "out" / "results.html")
    os.makedirs(os.path.dirname(page))
    query = {"kind": "image", "image": thumbs[0], "predicted_label": "dress", "predicted_probability": 0.8}
    write_gallery(page, query, _results(thumbs, str(tmp_path / "gone.jpg")), title="Look-alikes")
    text = open(page, encoding="utf-8").read()
    p = _refs(text)
    _referenced_files_exist(page, p.refs)
    imgs = [r for r in p.refs if r.startswith("data:image/jpeg;base64,")]
    assert len(imgs) == 4  # query + 3 results with a thumbnail; the missing one has a placeholder
    assert "BMISSING00" in text and "0.900" in text and "predicted: dress" in text
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert not any(n.startswith("results.html.tmp") for n in os.listdir(os.path.dirname(page)))
    # the thumbnails can be removed afterwards: the page does not need them
    for t in thumbs:
        os.remove(t)
    _referenced_files_exist(page, _refs(open(page, encoding="utf-8").read()).refs)


def test_fragment_is_reusable_and_takes_arrays(thumbs):
    from amazon_visual.web.gallery import gallery_fragment, gallery_page

    arr = np.full((30, 20, 3), 128, np.uint8)
    frag = gallery_fragment(
        {"kind": "image", "image": "https://example.com/q.jpg", "image_array": arr}, _results(thumbs, None), title="t"
    )
    assert frag.lstrip().startswith("<style>") and "<html" not in frag and "<body" not in frag
    assert frag.count("<figure") == 5
    assert "https://example.com/q.jpg" not in _refs(frag).refs
    page = gallery_page({"kind": "asin", "asin": "B0", "title": "q", "thumb": thumbs[1]}, [], title="empty")
    assert page.startswith("<!DOCTYPE html>") and page.count("<figure") == 1 and "data:image/jpeg" in page


def test_write_gallery_into_a_missing_folder_is_a_user_error(tmp_path):
    from amazon_visual.errors import UserError
    from amazon_visual.web.gallery import write_gallery

    with pytest.raises(UserError, match="does not exist"):
        write_gallery(str(tmp_path / "no" / "page.html"), {}, [])
