# SPDX-License-Identifier: GPL-2.0
# The HMM patchset's two commands and their helpers; see README.md.
# OUT=dir puts every build output there (default: out/ in this clone).

OUT ?= $(CURDIR)/out
export OUT

.PHONY: run test kernel shell series checkpatch compat bench clean help

help:
	@echo "make run         set up, build, boot QEMU and run the HMM demo"
	@echo "make test        build, boot QEMU and run every KUnit and kselftest suite"
	@echo "make kernel      prepare out/linux and build out/build only"
	@echo "make shell       boot the test guest with a shell on this terminal"
	@echo "make series      write the patch series to out/series and checkpatch it"
	@echo "make checkpatch  run checkpatch --strict on our files and patches"
	@echo "make compat      compile the in-tree users of the API against our headers"
	@echo "make bench       our HMM against pristine upstream 6.12, side by side"

run test kernel shell series checkpatch compat bench:
	@harness/hmm $@

clean:
	rm -rf $(OUT)
