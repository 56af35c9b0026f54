"""The tools behind the CLI's commands that are more than a parser: `demo` (the live demo), `bench` (timing a
package like trtexec), `replay` (files and synthetic cines to a daemon, as a scanner would).
"""
