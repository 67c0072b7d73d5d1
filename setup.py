from setuptools import find_packages, setup

setup(
    name="pid_diffusion",
    version="0.1.0",
    description="Physics Informed Distillation (PID) of EDM diffusion teachers into one-step generators",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["pid_diffusion", "pid_diffusion.*"]),
    install_requires=[
        # torch.is_autocast_enabled(device_type), used for the student's float32 output layers, needs 2.4
        "torch>=2.4",
        "torchvision>=0.19",
        "numpy>=1.23",
        "pillow>=9",
        "tqdm>=4.60",
        "matplotlib>=3.5",
        "mpi4py>=3.1",
    ],
    extras_require={
        # An MPI runtime from PyPI, for machines without a system MPI (clusters bring their own).
        "mpich": ["mpich"],
        # The real-data demo: scikit-learn ships the 1,797 handwritten digits inside its wheel.
        "digits": ["scikit-learn>=1.0"],
        # TensorBoard event files (--log_format tensorboard).
        "tensorboard": ["tensorboard>=2.10"],
        # EDM2's latent (ImageNet-512) teachers: Stable Diffusion's VAE decodes their samples.
        "latent": ["diffusers>=0.25"],
        # piq is only the reference for the LPIPS parity test, scipy's sqrtm the one for the Fréchet distance;
        # tensorboard's own reader checks the event files; diffusers builds the tiny VAE of the latent tests;
        # torch-fidelity is the reference of the Inception Score, precision/recall and KID parity tests.
        "test": ["pytest>=7", "piq>=0.7", "scipy>=1.9", "tensorboard>=2.10", "diffusers>=0.25", "torch-fidelity>=0.3"],
    },
)
