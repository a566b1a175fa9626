"""The backbones an image branch can be built on, by name.

Why a module of its own, without Keras: the config's checks, the feature cache's (which image
and fusion jobs import before TensorFlow may load) and the branch builder all ask "is this
``small_cnn``?" and "which preprocessing does this backbone take?"; here the names are spelled
once, and reading them loads no TensorFlow.
"""

SMALL_CNN = "small_cnn"
# keras.applications backbones -> the module whose preprocess_input maps 0-255 pixels to the
# range the backbone was trained on (EfficientNet and MobileNetV3 rescale inside the model and
# take 0-255; ResNet50V2 takes [-1, 1]; DenseNet121 ImageNet-normalised values).
BACKBONES = {
    "EfficientNetB0": "efficientnet",
    "EfficientNetB2": "efficientnet",
    "MobileNetV3Small": "mobilenet_v3",
    "MobileNetV3Large": "mobilenet_v3",
    "ResNet50V2": "resnet_v2",
    "DenseNet121": "densenet",
}
