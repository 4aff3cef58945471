"""VM templates (Kata's "VM templating" factory), Cocoon's normal way to start a VM.

A template is a generic VM (agent idle, no per-sandbox state) booted once and
saved: its guest RAM in a file written through a shared mapping, its device
state (without RAM, ``x-ignore-shared``) in a small file. A sandbox then starts
as a *clone*: a new QEMU maps the RAM file privately (copy-on-write, the file is
never written), loads the device state and runs, ~0.1 s after exec instead of a
~5-10 s boot under TCG. The sandbox service makes the clone unique afterwards
(clock, CRNG seed, hostname, its own shared directory, NICs hot-plugged).

* :mod:`cocoon.factory.key`: which template fits a VM plan (pure);
* :mod:`cocoon.factory.store`: the template directory, its metadata, checks and lock;
* :mod:`cocoon.factory.build`: boot and save a template;
* :mod:`cocoon.factory.choose`: pick, create or refuse a template for one sandbox.
"""
