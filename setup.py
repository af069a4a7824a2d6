"""Installs jaxmm: interpretable multimodal medical classification in JAX/Flax."""
import setuptools

ONEDNN_PLATFORMS = "sys_platform == 'linux' and platform_machine == 'x86_64'"

INSTALL_REQUIRES = [
    "jax>=0.10",
    "flax>=0.12",
    "optax>=0.2.5",
    "orbax-checkpoint>=0.12",
    "tensorflow-datasets>=4.9.10",
    "array-record>=0.8",
    "importlib-resources>=6",  # tfds builders defined outside tfds need it (etils.epath)
    "grain>=0.2.18",
    "transformers>=5.0",
    "safetensors>=0.4",  # pretrained weights without torch (jaxmm.third_party)
    "scikit-learn>=1.5,<1.11",  # SVC(probability=True), the calibrated SVM baseline, goes in 1.11
    "scipy>=1.13",
    "shap>=0.46",
    "ml-collections>=1.0",
    "absl-py>=2.1",
    "matplotlib>=3.9",
    "tqdm>=4.66",
    "numpy>=1.26",
    "pillow>=10",
    # oneDNN convolutions on CPU (jaxmm/models/onednn_conv.py; built on first use with g++,
    # XLA's own convolutions where these or a compiler are missing).
    f"onednn-cpu-gomp==2023.2.0; {ONEDNN_PLATFORMS}",
    f"onednn-devel-cpu-gomp==2023.2.0; {ONEDNN_PLATFORMS}",
]

TEST_REQUIRES = [
    "pytest>=8",
    "hypothesis>=6.100",
    "torch==2.13.0",
    "captum>=0.8",
    "playwright>=1.40",  # drives Debian's /usr/bin/chromium in the report test (no browser download)
]

setuptools.setup(
    name="jaxmm",
    version="0.1.0",
    description="Interpretable multimodal medical classification in JAX/Flax.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["jaxmm", "jaxmm.*"]),
    package_data={"jaxmm.models": ["onednn_conv.cc", "batch_norm.cc", "max_pool.cc"]},
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES},
)
