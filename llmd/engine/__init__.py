"""The engine: one child process per loaded model, each running a continuous-batching loop.

`client` is the daemon's side (spawn, talk, restart); `worker` is the child's main;
`scheduler` decides what each step decodes; `llama` is the only code that touches llama.cpp.
"""
