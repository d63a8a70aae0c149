"""Builds a corpus of real PDFs from different producers, with pdftotext references, for
`rag_eval.py pdfs` (the PDF fallback's acceptance check):

    python3 scripts/pdf-corpus.py OUT [--text FILE.jsonl]
    bash ../shared/eval/with-server.sh python3 ../shared/eval/rag_eval.py pdfs --dir OUT/pdfs

Producers: LibreOffice (Writer, Calc, Impress exports of files made with python-docx,
openpyxl and python-pptx), LaTeX (pdflatex: article, two columns, tables, slides, beamer,
a form, mathematics, a 300-page book), Chromium's print to PDF (article, tables, CSS
columns, a letter, a form) and two PDF libraries (fpdf2: core font, embedded Unicode font, a
table; reportlab: two-column frames, a table, an AcroForm).

The prose is real text, so that finding a reference sentence means finding that sentence:
abstracts from a BEIR-layout corpus.jsonl (SciFact in ../shared/datasets by default) or
any JSONL with "title" and "text"; random words only when none is given or found.

Needs Debian's libreoffice-{writer,calc,impress}-nogui, texlive-latex-base,
texlive-latex-recommended, texlive-latex-extra, texlive-fonts-recommended, lmodern, chromium,
poppler-utils, fonts-dejavu-core, and the pip packages of fixtures/gen_office.py plus
reportlab.
"""

import argparse
import html
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import unicodedata

import docx
import openpyxl
import pptx
from docx.oxml.ns import qn
from docx.oxml import OxmlElement
from fpdf import FPDF

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_TEXT = os.path.join(HERE, "..", "..", "shared", "datasets", "scifact", "corpus.jsonl")
WORDS = (
    "turbine harbour ledger invoice quarterly forecast supplier warehouse compliance audit "
    "engineer schedule maintenance network latency throughput customer contract renewal "
    "pipeline storage archive policy budget revenue margin region office manager analyst "
    "report summary figure table column row value estimate measure sample laboratory "
    "protocol reactor vessel pressure valve sensor signal voltage current battery charge "
    "river bridge railway station platform ticket passenger freight container vessel crane "
    "library catalogue journal chapter section paragraph footnote appendix glossary index "
    "weather forecast rainfall temperature humidity pressure wind season harvest orchard"
).split()


def plain(s):
    """ASCII only, so that every producer's fonts can set it (pdflatex's T1, fpdf2's core
    fonts): accents dropped, symbols without an ASCII form removed."""
    s = unicodedata.normalize("NFKD", s).encode("ascii", "ignore").decode()
    return " ".join(s.split())


class Prose:
    """Sentences and paragraphs of real text, handed out in order (no repeats until the
    source is used up), or random words without a source."""

    def __init__(self, rng, path):
        self.rng = rng
        self.paras = []
        if path and os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    rec = json.loads(line)
                    text = plain(rec.get("text", ""))
                    if len(text.split()) >= 60:
                        self.paras.append(text)
            rng.shuffle(self.paras)
        self.next = 0

    def real(self):
        return bool(self.paras)

    def paragraph(self, k=None):
        if not self.paras:
            return " ".join(self.sentence() for _ in range(k or self.rng.randint(3, 6)))
        p = self.paras[self.next % len(self.paras)]
        self.next += 1
        if k:  # the first k sentences
            parts = [x for x in p.replace(". ", ".\n").split("\n") if x]
            p = " ".join(parts[:k])
        return p

    def sentence(self, n=None):
        if self.paras and not n:
            p = self.paragraph()
            parts = [x for x in p.replace(". ", ".\n").split("\n") if len(x.split()) >= 6]
            return parts[0] if parts else p
        rng = self.rng
        n = n or rng.randint(10, 22)
        w = [rng.choice(WORDS) for _ in range(n)]
        w[0] = w[0].capitalize()
        return " ".join(w) + "."

    def words(self, n):
        """n words for a table cell or a title."""
        if self.paras:
            w = [x.strip(".,;:()[]") for x in self.paragraph().split()]
            w = [x for x in w if x.isalpha()] or ["value"]
            start = self.rng.randrange(max(len(w) - n, 1))
            return " ".join(w[start:start + n])
        return " ".join(self.rng.choice(WORDS) for _ in range(n))


def tex(s):
    """Escapes LaTeX's special characters."""
    out = []
    for c in s:
        if c in "&%$#_{}":
            out.append("\\" + c)
        elif c == "~":
            out.append(r"\textasciitilde{}")
        elif c == "^":
            out.append(r"\textasciicircum{}")
        elif c == "\\":
            out.append(r"\textbackslash{}")
        elif c in "<>|":
            out.append({"<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}"}[c])
        else:
            out.append(c)
    return "".join(out)


def run(cmd, cwd=None):
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)


def soffice(src, out_dir):
    with tempfile.TemporaryDirectory() as profile:
        run(["soffice", f"-env:UserInstallation=file://{profile}", "--headless", "--convert-to", "pdf",
             "--outdir", out_dir, src])


def latex(name, body, out_dir, work):
    tex = os.path.join(work, name + ".tex")
    with open(tex, "w") as f:
        f.write(body)
    for _ in range(2):
        run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", name + ".tex"], cwd=work)
    shutil.copy(os.path.join(work, name + ".pdf"), os.path.join(out_dir, name + ".pdf"))


def chromium(name, html, out_dir, work):
    src = os.path.join(work, name + ".html")
    with open(src, "w") as f:
        f.write(html)
    run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-pdf-header-footer",
         f"--print-to-pdf={os.path.join(out_dir, name + '.pdf')}", "file://" + src])


def writer_docs(pr, out, work):
    d = docx.Document()
    d.add_heading("Annual Operations Report", 0)
    for ch in range(6):
        d.add_heading(f"Section {ch + 1}: {pr.words(3).capitalize()}", 1)
        for _ in range(4):
            d.add_paragraph(pr.paragraph())
    d.save(os.path.join(work, "lo-writer-report.docx"))

    d = docx.Document()
    d.add_heading("Supplier Tables", 1)
    for t in range(4):
        d.add_paragraph(pr.paragraph(2))
        table = d.add_table(rows=12, cols=4)
        table.style = "Table Grid"
        for r in range(12):
            for c in range(4):
                table.cell(r, c).text = pr.words(2) if r else f"Column {c + 1}"
    d.save(os.path.join(work, "lo-writer-tables.docx"))

    d = docx.Document()
    sect = d.sections[0]._sectPr
    cols = OxmlElement("w:cols")
    cols.set(qn("w:num"), "2")
    sect.append(cols)
    d.add_heading("Two Column Newsletter", 1)
    for _ in range(16):
        d.add_paragraph(pr.paragraph())
    d.save(os.path.join(work, "lo-writer-columns.docx"))
    for name in ["lo-writer-report", "lo-writer-tables", "lo-writer-columns"]:
        soffice(os.path.join(work, name + ".docx"), out)


def calc_docs(pr, out, work):
    rng = pr.rng
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "Inventory"
    ws.append(["Item", "Warehouse", "Supplier", "Quantity", "Note"])
    for i in range(150):
        ws.append([f"{pr.words(1)} {i}", pr.words(1), pr.words(1), rng.randint(1, 900), pr.words(6)])
    ws2 = wb.create_sheet("Regions")
    ws2.append(["Region", "Manager", "Revenue", "Comment"])
    for i in range(40):
        ws2.append([pr.words(1), pr.words(1).capitalize(), rng.randint(1000, 99999), pr.words(7)])
    wb.save(os.path.join(work, "lo-calc-inventory.xlsx"))
    soffice(os.path.join(work, "lo-calc-inventory.xlsx"), out)


def impress_docs(pr, out, work):
    p = pptx.Presentation()
    for i in range(12):
        s = p.slides.add_slide(p.slide_layouts[1])
        s.shapes.title.text = f"Slide {i + 1}: {pr.words(2).capitalize()}"
        s.placeholders[1].text = "\n".join(pr.words(9) for _ in range(3))
    p.save(os.path.join(work, "lo-impress-slides.pptx"))
    p = pptx.Presentation()
    for i in range(5):
        s = p.slides.add_slide(p.slide_layouts[5])
        s.shapes.title.text = f"Quarter {i + 1} figures"
        shape = s.shapes.add_table(6, 3, pptx.util.Inches(1), pptx.util.Inches(1.8), pptx.util.Inches(8), pptx.util.Inches(4))
        for r in range(6):
            for c in range(3):
                shape.table.cell(r, c).text = pr.words(2)
    p.save(os.path.join(work, "lo-impress-tables.pptx"))
    for name in ["lo-impress-slides", "lo-impress-tables"]:
        soffice(os.path.join(work, name + ".pptx"), out)


def latex_docs(pr, out, work, book_pages):
    paras = lambda k: "\n\n".join(tex(pr.paragraph()) for _ in range(k))
    pre = r"\documentclass{article}\usepackage[T1]{fontenc}\usepackage{lmodern}"
    latex("tex-article", pre + r"""\begin{document}
\title{Field Notes}\author{Survey Team}\maketitle
\section{Overview}""" + paras(8) + r"\section{Findings}" + paras(8) + r"\end{document}", out, work)
    latex("tex-twocolumn", r"""\documentclass[twocolumn]{article}\usepackage[T1]{fontenc}\usepackage{lmodern}\begin{document}
\section{Introduction}""" + paras(10) + r"\section{Method}" + paras(10) + r"\end{document}", out, work)
    rows = "\n".join(" & ".join(tex(pr.words(2)) for _ in range(4)) + r" \\" for _ in range(25))
    latex("tex-tables", pre + r"""\usepackage{booktabs}\begin{document}
\section{Measurements}""" + paras(2) + r"""
\begin{tabular}{llll}\toprule Site & Sensor & Reading & Status \\ \midrule
""" + rows + r"""
\bottomrule\end{tabular}

""" + paras(2) + r"\end{document}", out, work)
    frames = "\n".join(
        r"\begin{slide}\begin{center}" + tex(pr.words(2).capitalize()) + r"\end{center}\begin{itemize}"
        + "".join(r"\item " + tex(pr.words(7)) for _ in range(3)) + r"\end{itemize}\end{slide}"
        for _ in range(10)
    )
    latex("tex-slides", r"\documentclass[landscape]{slides}\begin{document}" + frames + r"\end{document}", out, work)
    frames = "\n".join(
        r"\begin{frame}{" + tex(pr.words(3).capitalize()) + r"}\begin{itemize}"
        + "".join(r"\item " + tex(pr.sentence()) for _ in range(3)) + r"\end{itemize}\end{frame}"
        for _ in range(12)
    )
    latex("tex-beamer", r"\documentclass{beamer}\usepackage[T1]{fontenc}\usepackage{lmodern}\begin{document}" + frames
          + r"\end{document}", out, work)
    latex("tex-form", pre + r"""\usepackage{hyperref}\begin{document}
\section{Visitor registration form}""" + paras(2) + r"""
\begin{Form}
\TextField[width=8cm]{Full name}\\[6pt]
\TextField[width=8cm]{Company}\\[6pt]
\TextField[width=3cm]{Date}
\end{Form}

""" + paras(3) + r"\end{document}", out, work)
    maths = "\n\n".join(tex(pr.paragraph()) + r" \[ E_{" + str(i) + r"} = \sum_{k=1}^{n} \frac{a_k}{k^2} \]" for i in range(8))
    latex("tex-math", pre + r"\begin{document}\section{Model}" + maths + r"\end{document}", out, work)
    # About 2.3 abstracts a page: enough chapters for book_pages pages.
    chapters = "\n".join(r"\chapter{" + tex(pr.words(3).capitalize()) + "}\n" + paras(30)
                         for _ in range(max(book_pages * 23 // 300, 1)))
    latex("tex-book-300", r"\documentclass{book}\usepackage[T1]{fontenc}\usepackage{lmodern}\begin{document}" + chapters
          + r"\end{document}", out, work)


def chromium_docs(pr, out, work):
    rng = pr.rng
    ps = lambda k: "".join(f"<p>{html.escape(pr.paragraph())}</p>" for _ in range(k))
    w = lambda n: html.escape(pr.words(n))
    chromium("chrome-article", f"<html><body><h1>Harbour Bulletin</h1>{ps(12)}</body></html>", out, work)
    rows = "".join("<tr>" + "".join(f"<td>{w(2)} {rng.randint(1, 99)}</td>" for _ in range(5)) + "</tr>"
                   for _ in range(60))
    chromium("chrome-tables", f"<html><body><h1>Freight Register</h1>{ps(2)}<table border=1>{rows}</table>{ps(2)}</body></html>",
             out, work)
    chromium("chrome-columns", f"<html><body style='column-count:2'><h1>Station Digest</h1>{ps(14)}</body></html>", out, work)
    chromium("chrome-letter", f"<html><body style='font-family:serif'><p>Dear customer,</p>{ps(5)}<p>Kind regards</p></body></html>",
             out, work)
    form = "".join(f"<p><label>{w(2).capitalize()} <input value='{w(1)}'></label></p>" for _ in range(8))
    chromium("chrome-form", f"<html><body><h1>Permit Application</h1>{ps(3)}<form>{form}</form>{ps(2)}</body></html>", out, work)


def fpdf_docs(pr, out):
    rng = pr.rng
    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("Helvetica", size=11)
    for _ in range(10):
        pdf.multi_cell(0, 6, pr.paragraph())
        pdf.ln(3)
    pdf.output(os.path.join(out, "fpdf-core-font.pdf"))
    pdf = FPDF()
    pdf.add_font("DejaVu", "", FONT)
    pdf.set_font("DejaVu", size=11)
    for _ in range(3):
        pdf.add_page()
        for _ in range(6):
            pdf.multi_cell(0, 6, pr.paragraph())
            pdf.ln(3)
    pdf.output(os.path.join(out, "fpdf-unicode.pdf"))
    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("Helvetica", size=10)
    pdf.multi_cell(0, 6, pr.paragraph(2))
    with pdf.table() as table:
        for r in range(30):
            row = table.row()
            for _ in range(4):
                row.cell(f"{pr.words(2)} {rng.randint(1, 999)}")
    pdf.output(os.path.join(out, "fpdf-table.pdf"))


def reportlab_docs(pr, out):
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.lib.units import cm
    from reportlab.pdfgen import canvas
    from reportlab.platypus import BaseDocTemplate, Frame, PageTemplate, Paragraph, SimpleDocTemplate, Spacer, Table

    rng = pr.rng
    styles = getSampleStyleSheet()
    esc = lambda s: html.escape(s, quote=False)
    # Two columns: two frames a page.
    doc = BaseDocTemplate(os.path.join(out, "reportlab-columns.pdf"), pagesize=A4)
    w, h = A4
    gap, margin = 1 * cm, 2 * cm
    col = (w - 2 * margin - gap) / 2
    frames = [Frame(margin, margin, col, h - 2 * margin, id="left"),
              Frame(margin + col + gap, margin, col, h - 2 * margin, id="right")]
    doc.addPageTemplates([PageTemplate(id="two", frames=frames)])
    story = [Paragraph("Quarterly Research Digest", styles["Title"])]
    for _ in range(18):
        story += [Paragraph(esc(pr.paragraph()), styles["BodyText"]), Spacer(1, 6)]
    doc.build(story)
    # A table between paragraphs.
    doc = SimpleDocTemplate(os.path.join(out, "reportlab-table.pdf"), pagesize=A4)
    data = [["Site", "Sensor", "Reading", "Status"]] + [
        [pr.words(1).capitalize(), pr.words(2), str(rng.randint(10, 999)), pr.words(1)] for _ in range(35)]
    table = Table(data)
    table.setStyle([("GRID", (0, 0), (-1, -1), 0.5, colors.grey), ("BACKGROUND", (0, 0), (-1, 0), colors.lightgrey)])
    doc.build([Paragraph(esc(pr.paragraph()), styles["BodyText"]), Spacer(1, 12), table, Spacer(1, 12),
               Paragraph(esc(pr.paragraph()), styles["BodyText"])])
    # An AcroForm with text fields and a checkbox, and prose around it.
    c = canvas.Canvas(os.path.join(out, "reportlab-form.pdf"), pagesize=A4)
    c.setFont("Helvetica-Bold", 16)
    c.drawString(margin, h - margin, "Equipment Loan Request")
    text = c.beginText(margin, h - margin - 30)
    text.setFont("Helvetica", 10)
    for line in wrap(pr.paragraph(), 95):
        text.textLine(line)
    c.drawText(text)
    y = h - margin - 200
    for label in ["Applicant name", "Department", "Equipment", "Return date"]:
        c.drawString(margin, y, label)
        c.acroForm.textfield(name=label, x=margin + 120, y=y - 6, width=250, height=18, value=pr.words(2))
        y -= 36
    c.drawString(margin, y, "Insurance required")
    c.acroForm.checkbox(name="insurance", x=margin + 120, y=y - 4, size=14, checked=True)
    text = c.beginText(margin, y - 40)
    text.setFont("Helvetica", 10)
    for line in wrap(pr.paragraph() + " " + pr.paragraph(), 95):
        text.textLine(line)
    c.drawText(text)
    c.save()


def wrap(s, width):
    lines, line = [], ""
    for word in s.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + ([line] if line else [])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", nargs="?", default="pdf-corpus")
    ap.add_argument("--text", default=DEFAULT_TEXT, help="JSONL of {title, text} records: the prose")
    ap.add_argument("--book-pages", type=int, default=300)
    a = ap.parse_args()
    out = os.path.join(a.root, "pdfs")
    ref = os.path.join(a.root, "reference")
    os.makedirs(out, exist_ok=True)
    os.makedirs(ref, exist_ok=True)
    rng = random.Random(16)
    pr = Prose(rng, a.text)
    print("prose:", f"{len(pr.paras)} paragraphs from {a.text}" if pr.real() else "random words", file=sys.stderr)
    with tempfile.TemporaryDirectory() as work:
        writer_docs(pr, out, work)
        calc_docs(pr, out, work)
        impress_docs(pr, out, work)
        latex_docs(pr, out, work, a.book_pages)
        chromium_docs(pr, out, work)
        fpdf_docs(pr, out)
        reportlab_docs(pr, out)
    for name in sorted(os.listdir(out)):
        stem = name[:-4]
        run(["pdftotext", "-enc", "UTF-8", os.path.join(out, name), os.path.join(ref, stem + ".txt")])
        pages = subprocess.run(["pdfinfo", os.path.join(out, name)], capture_output=True, text=True).stdout
        pages = next((l.split()[-1] for l in pages.splitlines() if l.startswith("Pages:")), "?")
        print(f"{name}: {pages} pages", file=sys.stderr)
    print(f"{len(os.listdir(out))} PDFs in {out}, references in {ref}")


if __name__ == "__main__":
    main()
