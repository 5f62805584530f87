from reludoctor.cli import entry

entry()
