"""Package metadata, read from settings.ini (nbdev's single configuration)."""
from configparser import ConfigParser
import setuptools

cfg = ConfigParser(delimiters=['='])
cfg.read('settings.ini', encoding='utf-8')
cfg = cfg['DEFAULT']
licenses = {'apache2': 'Apache-2.0'}  # SPDX expressions

setuptools.setup(
    name=cfg['lib_name'],
    version=cfg['version'],
    description=cfg['description'],
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    author=cfg['author'],
    author_email=cfg['author_email'],
    license=licenses[cfg['license']],
    classifiers=['Programming Language :: Python :: 3', f"Intended Audience :: {cfg['audience']}"],
    keywords=cfg['keywords'].split(),
    url=cfg['git_url'],
    packages=setuptools.find_namespace_packages(include=['domain_canine', 'domain_canine.*']),
    package_data={'domain_canine.sample_corpus': ['*.txt', '*.md']},
    include_package_data=True,
    python_requires=f">={cfg['min_python']}",
    install_requires=cfg['requirements'].split(),
    extras_require={'dev': cfg['dev_requirements'].split(),
                    'wandb': ['wandb'], 'tensorboard': ['tensorboard']},
    entry_points={'console_scripts': cfg['console_scripts'].split(),
                  'nbdev': [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"]},
    zip_safe=False,
)
