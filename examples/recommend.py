"""
Title: Look-alike product recommendations from product photos
Description: The whole amazon-visual chain on the embedded sample catalog, through the Python API.

This example builds a TFRecord dataset from a small product catalog (Amazon's 2023
metadata format plus one photo per product), trains a small convolutional network to
predict each product's category from its photo, evaluates it, embeds every product with
the trained network, indexes the embeddings with Annoy, and recommends the products
that look most like a query photo. The result is an HTML gallery you can open in a
browser, and one report page for the whole experiment.

    python examples/recommend.py [--out recommend-example] [--epochs 60]

It takes a few minutes on a laptop CPU. The catalog is the one installed with the
package: 1,000 clothing photos in 10 classes by Alexey Grigorev and contributors
(github.com/alexeygrigorev/clothing-dataset-small, CC0-1.0). For your own catalog, give
your metadata file and image folder to `build_data` instead.
"""

"""
## Setup
"""
import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import amazon_visual
from amazon_visual import sample
from amazon_visual.web.gallery import write_gallery
from amazon_visual.web.report import write_report

parser = argparse.ArgumentParser(description="the amazon-visual chain on the embedded sample catalog")
parser.add_argument("--out", default="recommend-example", help="output folder")
parser.add_argument("--epochs", type=int, default=200, help="training epochs (the budget ends the run first)")
parser.add_argument("--minutes", type=float, default=2.0, help="time budget of the training")
args = parser.parse_args()
out = os.path.abspath(args.out)
os.makedirs(out, exist_ok=True)
data_dir, run_dir, index_dir = (os.path.join(out, d) for d in ("data", "run", "index"))

"""
## Build the dataset

`build_data` reads the metadata (any of the 2014, 2018 and 2023 Amazon formats), gives
each product the class found in its category path, finds its photo by ASIN in the
image folder, and writes a TensorFlow Datasets folder of TFRecord shards with
train / validation / test splits.
"""
if not os.path.isdir(data_dir):
    amazon_visual.build_data(
        sample.metadata_path(),
        data_dir,
        images_dir=sample.images_dir(),
        categories=sample.class_names(),  # T-Shirt, Longsleeve, Pants, ...
        image_size=160,
        splits=(0.7, 0.15, 0.15),
        workers=1,  # more workers start processes: then guard the script with `if __name__ == "__main__":`
    )
print("classes:", amazon_visual.data.class_names(data_dir))

"""
## Train a classifier

AlexNet (with batch norm), from scratch, on 64-pixel images, with its family's recipe
(learning rate with warm-up and cosine decay, light augmentation, label smoothing, weight
decay; see README "Recipes"). The model takes raw RGB values in [0, 255] (its first layer does
the preprocessing) and its layer `embedding` gives the vectors we index below. Training
resumes if interrupted; a finished run is kept. For ImageNet transfer learning use e.g.
`model="mobilenet_v2", weights="imagenet", image_size=160`.
"""
amazon_visual.train(
    data_dir,
    model="alexnet",
    out=run_dir,
    weights="none",
    image_size=64,
    epochs=args.epochs,
    max_minutes=args.minutes,  # the learning-rate schedule follows the time budget
)

"""
## Evaluate

Accuracy, the per-class classification report and the confusion matrix on the test split
(written to `run/eval_test/`).
"""
metrics = amazon_visual.evaluate(run_dir, data_dir, split="test")
print(f"test accuracy: {metrics['accuracy']:.3f} (chance: {1 / len(metrics['labels']):.3f})")

"""
## Index every product

Each product's photo goes through the trained network up to its `embedding` layer; the
vectors go into an Annoy index (angular distance) next to a table of the products and
small thumbnails, so galleries work offline.
"""
if not os.path.isfile(os.path.join(index_dir, "manifest.json")):
    amazon_visual.build_index(data_dir, index_dir, run_dir=run_dir)

"""
## Recommend

Query by photo (any image file, URL, PIL image or array) or by the ASIN of an indexed
product. Each result has its rank, ASIN, title, label and cosine similarity.
"""
rec = amazon_visual.Recommender.load(index_dir)
query_asin = rec.index.items["asin"][0]
query_photo = os.path.join(sample.images_dir(), f"{query_asin}.jpg")

by_photo = rec.recommend(image=query_photo, k=5)  # the photo's own product is indexed: it comes first
print("predicted category of the photo:", by_photo["query"].get("predicted_label"))
for r in by_photo["results"]:
    print(f"  #{r['rank']}  {r['similarity']:.3f}  {r['asin']}  {r['title']}")

by_asin = rec.recommend(asin=query_asin, k=5, same_category=True)  # never returns the product itself

"""
## Look at the results

One HTML gallery per query (the query image, then the look-alikes with their scores; the
images are embedded in the page), and the report page of the whole experiment.
"""
write_gallery(os.path.join(out, "gallery.html"), by_photo["query"], by_photo["results"], title="Look-alikes of a photo")
write_gallery(
    os.path.join(out, "gallery-asin.html"),
    by_asin["query"],
    by_asin["results"],
    title=f"Look-alikes of {query_asin} in its own category",
)
rec.close()
print("gallery:", os.path.join(out, "gallery.html"))
print("report:", write_report(out))  # finds data/, run/ and index/ in the folder
