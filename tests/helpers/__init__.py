"""What several tests share: the repo's paths, tiny real settings, composing configs as the CLIs do, the
environment of a child process, running a bnexp command in a subprocess, reading offline W&B runs back."""
