#!/usr/bin/env bash
# Makes sure the document tools kb runs in its isolated parser are installed: Tesseract with
# the English and Simplified-Chinese language data (scanned pages, images) and poppler's
# pdftoppm/pdftotext (rasterising scans, the PDF text fallback). Installs them with apt when
# missing. kb works without them; scanned documents then fail with a message saying so.
set -euo pipefail
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
have_langs() {
  command -v tesseract >/dev/null || return 1
  local langs
  langs="$(tesseract --list-langs 2>/dev/null)"
  grep -qx eng <<<"$langs" && grep -qx chi_sim <<<"$langs"
}
if have_langs && command -v pdftoppm >/dev/null && command -v pdftotext >/dev/null; then
  echo "tools: tesseract and poppler present"
  exit 0
fi
echo "tools: installing tesseract-ocr (eng, chi_sim) and poppler-utils"
as_root apt-get update -qq
DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq \
  tesseract-ocr tesseract-ocr-eng tesseract-ocr-chi-sim poppler-utils >/dev/null
have_langs || { echo "tools: tesseract languages missing after install" >&2; exit 1; }
echo "tools: ready"
