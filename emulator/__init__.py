"""A local Dataverse Web API emulator: HTTPS, a token endpoint, SQLite storage, fault injection.

It is a separate program (`python -m emulator`, or `dvconnect emulator`) that speaks HTTP and
never imports `connector` or `jobs`. Its behaviour follows `dataverse-webapi.md`: server texts are
byte-exact, and every UNCONFIRMED item takes the emulator default of §17 of that reference.
"""
