"""Building a branch: its layers and their names, its backbone's preprocessing and starting
weights, its augmentation and its compute precision."""

import numpy as np
import pytest

from fusion_dag.branch import build_image_branch, load_backbone_weights
from tests.conftest import CLASSES, train_tiny_branch


def test_every_layer_is_named_after_the_modality():
    model = build_image_branch("depth_map", (32, 32, 1), 3, {"augmentation": {"flip": "vertical"}})
    assert all(layer.name.startswith("depth_map_") for layer in model.layers)
    assert model.output.shape[-1] == 3


def test_grey_images_enter_a_pretrained_backbone_on_three_channels():
    model = build_image_branch("depth_map", (32, 32, 1), 3, {"backbone": "ResNet50V2"})
    assert model.input.shape[-1] == 1
    assert model.get_layer("depth_map_grey_to_rgb").output.shape[-1] == 3
    assert model.get_layer("depth_map_backbone").input.shape[-1] == 3


@pytest.mark.parametrize(
    ("backbone", "module"),
    [("ResNet50V2", "resnet_v2"), ("DenseNet121", "densenet"), ("EfficientNetB0", "efficientnet")],
)
def test_each_backbone_gets_its_own_preprocess_input(backbone, module):
    import keras

    model = build_image_branch("photo", (32, 32, 3), 3, {"backbone": backbone})
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    step = keras.Model(model.input, model.get_layer("photo_preprocess").output)
    expected = getattr(keras.applications, module).preprocess_input(pixels.copy())
    np.testing.assert_allclose(step.predict(pixels, verbose=0), expected, atol=1e-5)


def test_augmentation_is_active_in_training_only():
    augmentation = {"flip": "horizontal", "rotation": 0.1, "zoom": 0.1, "contrast": 0.2}
    model = build_image_branch("photo", (32, 32, 3), 3, {"augmentation": augmentation})
    names = {layer.name for layer in model.layers}
    assert {"photo_flip", "photo_rotation", "photo_zoom", "photo_contrast"} <= names
    augmented = keras_submodel(model, "photo_contrast")
    pixels = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    # predict (inference) passes images through unchanged, and twice gives the same output.
    np.testing.assert_array_equal(augmented.predict(pixels, verbose=0), pixels)
    np.testing.assert_array_equal(
        model.predict(pixels, verbose=0), model.predict(pixels, verbose=0)
    )
    # In training (what fit runs) the same images come out transformed.
    assert not np.allclose(np.asarray(augmented(pixels, training=True)), pixels)


def keras_submodel(model, layer_name):
    """The part of ``model`` from its input to one named layer's output."""
    import keras

    return keras.Model(model.input, model.get_layer(layer_name).output)


def test_mixed_precision_branch_computes_in_float16_and_outputs_float32(cached, tmp_path):
    model = train_tiny_branch(cached, tmp_path, epochs=1, mixed_precision=True)
    assert model.get_layer("thermal_map_conv1").compute_dtype == "float16"
    assert model.get_layer("thermal_map_conv1").variable_dtype == "float32"
    assert model.output.dtype == "float32"
    # The policy is restored for whatever is built next.
    plain = build_image_branch("depth_map", (24, 24, 3), 3)
    assert plain.get_layer("depth_map_conv1").compute_dtype == "float32"


def test_imagenet_weights_are_requested_from_keras_and_copied_into_the_branch(monkeypatch):
    """No network here: Keras's constructor is replaced by one that records what it was asked
    for and returns a seeded model standing in for the downloaded weights."""
    import keras

    original = keras.applications.MobileNetV3Small
    calls = []

    def downloaded(**kwargs):
        calls.append(kwargs)
        keras.utils.set_random_seed(11)
        return original(**{**kwargs, "weights": None})

    settings = {"backbone": "MobileNetV3Small", "backbone_weights": "imagenet"}
    model = build_image_branch("photo", (32, 32, 1), 3, settings)
    monkeypatch.setattr(keras.applications, "MobileNetV3Small", downloaded)
    load_backbone_weights(model, "photo", settings)
    (call,) = calls
    assert call["weights"] == "imagenet" and call["include_top"] is False
    assert tuple(call["input_shape"]) == (32, 32, 3)  # grey images enter on three channels
    keras.utils.set_random_seed(11)
    reference = original(include_top=False, weights=None, input_shape=(32, 32, 3))
    for loaded, expected in zip(
        model.get_layer("photo_backbone").get_weights(), reference.get_weights(), strict=True
    ):
        np.testing.assert_array_equal(loaded, expected)


def test_standardization_weights_are_the_training_views_statistics_and_load_frozen_by_name(
    cached, tmp_path, caplog
):
    import logging

    from fusion_dag.checkpoint import checkpoint_sidecar, load_frozen_branch
    from fusion_dag.heatmaps import grad_cam

    settings = {"standardize": True, "batch_norm": True, "epochs": 1}
    model = train_tiny_branch(cached, tmp_path, **settings)
    mean, std = model.get_layer("thermal_map_standardize").get_weights()
    images = np.asarray(cached[0], dtype=float) / 255
    assert np.all((mean > 0) & (mean < 1)) and np.all(std > 0)
    assert np.allclose(mean, images.mean(axis=(0, 1, 2)), atol=0.05)
    # Rebuilt from the settings, verified, loaded by layer name and frozen, as fusion does it.
    checkpoint = tmp_path / "checkpoint.weights.h5"
    rebuilt = build_image_branch("thermal_map", cached[0].shape[1:], 3, settings)
    sidecar = checkpoint_sidecar(model, "thermal_map", "small_cnn", (1, 1), CLASSES, checkpoint)
    required = {"repeat": 1, "fold": 1, "classes": CLASSES, "backbone": "small_cnn"}
    with caplog.at_level(logging.INFO):
        load_frozen_branch(rebuilt, "thermal_map", checkpoint, sidecar, required)
    assert "Loaded weights for layer: thermal_map_standardize" in caplog.text
    assert "Frozen layer: thermal_map_standardize" in caplog.text
    assert not rebuilt.trainable_weights
    np.testing.assert_allclose(rebuilt.get_layer("thermal_map_standardize").get_weights()[0], mean)
    pixels = np.asarray(cached[0][:8])
    expected = model.predict(pixels, verbose=0)
    np.testing.assert_allclose(rebuilt.predict(pixels, verbose=0), expected, atol=1e-5)
    # Grad-CAM runs the branch layer by layer: the standardisation must be one of its steps
    # (a logit path without it would not give the branch's predicted class back).
    heat = grad_cam(rebuilt, pixels, expected.argmax(axis=1), "thermal_map_conv3")
    assert heat.shape[0] == len(pixels) and np.isfinite(heat).all()


def test_grad_cam_runs_the_standardisation_as_the_branch_graph_does():
    """Grad-CAM runs the branch layer by layer: its heatmaps must be those of the branch's own
    graph, which standardises the pixels (far from 0 and 1 here, so skipping it shows)."""
    import keras
    import tensorflow as tf

    from fusion_dag.heatmaps import grad_cam

    model = build_image_branch("photo", (16, 16, 3), 3, {"standardize": True})
    mean, std = np.array([0.9, 0.1, 0.5], "float32"), np.array([0.01, 0.2, 0.05], "float32")
    model.get_layer("photo_standardize").set_weights([mean, std])
    pixels = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3)).astype("uint8")
    classes = model.predict(pixels, verbose=0).argmax(axis=1)
    graph = keras.Model(
        model.input, [model.get_layer("photo_conv3").output, model.get_layer("photo_gap").output]
    )
    last = model.get_layer("photo_probs")
    with tf.GradientTape() as tape:
        feature_map, pooled = graph(tf.constant(pixels, "float32"), training=False)
        scores = tf.gather(tf.matmul(pooled, last.kernel) + last.bias, classes, batch_dims=1)
    weights = tf.reduce_mean(tape.gradient(scores, feature_map), axis=(1, 2))
    heat = tf.nn.relu(tf.einsum("nhwc,nc->nhw", feature_map, weights)).numpy()
    peak = heat.max(axis=(1, 2), keepdims=True)
    expected = np.divide(heat, peak, out=np.zeros_like(heat), where=peak > 0)
    np.testing.assert_allclose(grad_cam(model, pixels, classes, "photo_conv3"), expected, atol=1e-5)


def test_a_flattened_small_cnn_tells_where_a_pattern_sits_and_an_averaged_one_does_not():
    """The same bright square at two places of a crop, 16 px apart (a multiple of the three
    poolings' stride, so the convolutions see the same pixels): global average pooling gives
    both crops one output; flattening keeps the position and tells them apart."""
    crops = np.zeros((2, 48, 48, 3), dtype="uint8")
    crops[0, 12:20, 12:20] = 255
    crops[1, 28:36, 28:36] = 255
    outputs = {}
    for pooling in ("flatten", "average"):
        model = build_image_branch("thermal", (48, 48, 3), 3, {"pooling": pooling}, seed=1)
        outputs[pooling] = model.predict(crops, verbose=0)
    flat = build_image_branch("thermal", (48, 48, 3), 3, {"pooling": "flatten"})
    assert flat.get_layer("thermal_flatten").output.shape[-1] == 6 * 6 * 64
    # A branch built without the key (a checkpoint from before it) averages, as it did.
    names = [layer.name for layer in build_image_branch("thermal", (48, 48, 3), 3).layers]
    assert "thermal_gap" in names and "thermal_flatten" not in names
    np.testing.assert_allclose(outputs["average"][0], outputs["average"][1], atol=1e-6)
    assert np.abs(outputs["flatten"][0] - outputs["flatten"][1]).max() > 1e-3
