"""What the cabinet and the server share (DESIGN sections 5 and 6): command actions and their
arguments, signed-command verification, replies, code tags and LK1 tokens, JWS, JSON Schemas and
the AsyncAPI document. Imports neither ``locker.cabinet`` nor ``locker.fleet``."""
