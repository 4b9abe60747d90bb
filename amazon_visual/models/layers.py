"""Custom Keras layers of amazon-visual (serializable, no Lambda layers).

Every model takes float32 RGB images with values in [0, 255]; its first layer is a
:class:`Preprocess` layer that turns them into what the network expects.
"""

import keras
from keras import ops

# ImageNet statistics used by keras.applications.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)

PREPROCESSING_MODES = {
    "caffe": "RGB->BGR, minus ImageNet mean per channel, no scaling (VGG16, ResNet50 v1)",
    "tf": "scale to [-1, 1] (MobileNet, ResNet v2, Inception, Xception, NASNet)",
    "torch": "scale to [0, 1], minus ImageNet mean, divide by ImageNet std (DenseNet)",
    "unit": "scale to [0, 1] (hand-written AlexNet)",
    "centered": "scale to [-0.5, 0.5] (linear SVM on raw pixels)",
    "none": "raw [0, 255]; the backbone normalises inside (EfficientNet, ConvNeXt, MobileNetV3, RegNet)",
}


@keras.saving.register_keras_serializable(package="amazon_visual")
class Preprocess(keras.layers.Layer):
    """Maps float RGB images in [0, 255] to a network's input convention.

    ``mode`` is one of :data:`PREPROCESSING_MODES`.
    """

    def __init__(self, mode="unit", **kwargs):
        super().__init__(**kwargs)
        if mode not in PREPROCESSING_MODES:
            raise ValueError(f"unknown preprocessing mode {mode!r}; one of {sorted(PREPROCESSING_MODES)}")
        self.mode = mode

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if self.mode == "caffe":
            x = ops.flip(x, axis=-1)  # RGB -> BGR
            return x - ops.convert_to_tensor(_CAFFE_MEAN_BGR, dtype=x.dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            x = x / 255.0
            mean = ops.convert_to_tensor(_TORCH_MEAN, dtype=x.dtype)
            std = ops.convert_to_tensor(_TORCH_STD, dtype=x.dtype)
            return (x - mean) / std
        if self.mode == "unit":
            return x / 255.0
        if self.mode == "centered":
            return x / 255.0 - 0.5
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config["mode"] = self.mode
        return config
