"""Builds a corpus of real PDFs from different producers, with pdftotext references, for
`rag_eval.py pdfs` (the PDF fallback's acceptance check):

    python3 scripts/pdf-corpus.py OUT
    bash ../shared/eval/with-server.sh python3 ../shared/eval/rag_eval.py pdfs --dir OUT/pdfs

Producers: LibreOffice (Writer, Calc, Impress exports of files made with python-docx,
openpyxl and python-pptx), LaTeX (pdflatex: article, two columns, tables, slides, a
form, a 300-page book), Chromium's print to PDF (article, tables, CSS columns, a form) and a
PDF library (fpdf2: core font, embedded Unicode font, a table).

Needs Debian's libreoffice-{writer,calc,impress}-nogui, texlive-latex-base,
texlive-latex-recommended,
texlive-fonts-recommended, chromium, poppler-utils, fonts-dejavu-core, and the pip packages of
fixtures/gen_office.py.
"""

import os
import random
import shutil
import subprocess
import sys
import tempfile

import docx
import openpyxl
import pptx
from docx.oxml.ns import qn
from docx.oxml import OxmlElement
from fpdf import FPDF

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
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


def sentence(rng, n=None):
    n = n or rng.randint(10, 22)
    w = [rng.choice(WORDS) for _ in range(n)]
    w[0] = w[0].capitalize()
    return " ".join(w) + "."


def paragraph(rng, k=None):
    return " ".join(sentence(rng) for _ in range(k or rng.randint(3, 6)))


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


def writer_docs(rng, out, work):
    d = docx.Document()
    d.add_heading("Annual Operations Report", 0)
    for ch in range(6):
        d.add_heading(f"Section {ch + 1}", 1)
        for _ in range(4):
            d.add_paragraph(paragraph(rng))
    d.save(os.path.join(work, "lo-writer-report.docx"))

    d = docx.Document()
    d.add_heading("Supplier Tables", 1)
    for t in range(4):
        d.add_paragraph(paragraph(rng, 2))
        table = d.add_table(rows=12, cols=4)
        table.style = "Table Grid"
        for r in range(12):
            for c in range(4):
                table.cell(r, c).text = " ".join(rng.choice(WORDS) for _ in range(2)) if r else f"Column {c + 1}"
    d.save(os.path.join(work, "lo-writer-tables.docx"))

    d = docx.Document()
    sect = d.sections[0]._sectPr
    cols = OxmlElement("w:cols")
    cols.set(qn("w:num"), "2")
    sect.append(cols)
    d.add_heading("Two Column Newsletter", 1)
    for _ in range(16):
        d.add_paragraph(paragraph(rng))
    d.save(os.path.join(work, "lo-writer-columns.docx"))
    for name in ["lo-writer-report", "lo-writer-tables", "lo-writer-columns"]:
        soffice(os.path.join(work, name + ".docx"), out)


def calc_docs(rng, out, work):
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "Inventory"
    ws.append(["Item", "Warehouse", "Supplier", "Quantity", "Note"])
    for i in range(150):
        ws.append([f"{rng.choice(WORDS)} {i}", rng.choice(WORDS), rng.choice(WORDS), rng.randint(1, 900),
                   sentence(rng, 8)])
    ws2 = wb.create_sheet("Regions")
    ws2.append(["Region", "Manager", "Revenue", "Comment"])
    for i in range(40):
        ws2.append([rng.choice(WORDS), rng.choice(WORDS).capitalize(), rng.randint(1000, 99999), sentence(rng, 9)])
    wb.save(os.path.join(work, "lo-calc-inventory.xlsx"))
    soffice(os.path.join(work, "lo-calc-inventory.xlsx"), out)


def impress_docs(rng, out, work):
    p = pptx.Presentation()
    for i in range(12):
        s = p.slides.add_slide(p.slide_layouts[1])
        s.shapes.title.text = f"Slide {i + 1}: {rng.choice(WORDS).capitalize()} plan"
        s.placeholders[1].text = "\n".join(sentence(rng, 9) for _ in range(3))
    p.save(os.path.join(work, "lo-impress-slides.pptx"))
    p = pptx.Presentation()
    for i in range(5):
        s = p.slides.add_slide(p.slide_layouts[5])
        s.shapes.title.text = f"Quarter {i + 1} figures"
        shape = s.shapes.add_table(6, 3, pptx.util.Inches(1), pptx.util.Inches(1.8), pptx.util.Inches(8), pptx.util.Inches(4))
        for r in range(6):
            for c in range(3):
                shape.table.cell(r, c).text = " ".join(rng.choice(WORDS) for _ in range(2))
    p.save(os.path.join(work, "lo-impress-tables.pptx"))
    for name in ["lo-impress-slides", "lo-impress-tables"]:
        soffice(os.path.join(work, name + ".pptx"), out)


def latex_docs(rng, out, work):
    paras = lambda k: "\n\n".join(paragraph(rng) for _ in range(k))
    latex("tex-article", r"""\documentclass{article}\usepackage[T1]{fontenc}\begin{document}
\title{Field Notes}\author{Survey Team}\maketitle
\section{Overview}""" + paras(8) + r"\section{Findings}" + paras(8) + r"\end{document}", out, work)
    latex("tex-twocolumn", r"""\documentclass[twocolumn]{article}\usepackage[T1]{fontenc}\begin{document}
\section{Introduction}""" + paras(10) + r"\section{Method}" + paras(10) + r"\end{document}", out, work)
    rows = "\n".join(" & ".join(rng.choice(WORDS) for _ in range(4)) + r" \\" for _ in range(25))
    latex("tex-tables", r"""\documentclass{article}\usepackage[T1]{fontenc}\usepackage{booktabs}\begin{document}
\section{Measurements}""" + paras(2) + r"""
\begin{tabular}{llll}\toprule Site & Sensor & Reading & Status \\ \midrule
""" + rows + r"""
\bottomrule\end{tabular}

""" + paras(2) + r"\end{document}", out, work)
    frames = "\n".join(
        r"\begin{slide}\begin{center}" + rng.choice(WORDS).capitalize() + r" update\end{center}\begin{itemize}"
        + "".join(r"\item " + sentence(rng, 6) for _ in range(3)) + r"\end{itemize}\end{slide}"
        for _ in range(10)
    )
    latex("tex-slides", r"\documentclass[landscape]{slides}\begin{document}" + frames + r"\end{document}", out, work)
    latex("tex-form", r"""\documentclass{article}\usepackage[T1]{fontenc}\usepackage{hyperref}\begin{document}
\section{Visitor registration form}""" + paras(2) + r"""
\begin{Form}
\TextField[width=8cm]{Full name}\\[6pt]
\TextField[width=8cm]{Company}\\[6pt]
\TextField[width=3cm]{Date}
\end{Form}

""" + paras(3) + r"\end{document}", out, work)
    maths = "\n\n".join(paragraph(rng) + r" \[ E_{" + str(i) + r"} = \sum_{k=1}^{n} \frac{a_k}{k^2} \]" for i in range(8))
    latex("tex-math", r"\documentclass{article}\usepackage[T1]{fontenc}\begin{document}\section{Model}" + maths + r"\end{document}",
          out, work)
    chapters = "\n".join(r"\chapter{" + rng.choice(WORDS).capitalize() + "}\n" + paras(40) for _ in range(38))
    latex("tex-book-300", r"\documentclass{book}\usepackage[T1]{fontenc}\begin{document}" + chapters + r"\end{document}",
          out, work)


def chromium_docs(rng, out, work):
    ps = lambda k: "".join(f"<p>{paragraph(rng)}</p>" for _ in range(k))
    chromium("chrome-article", f"<html><body><h1>Harbour Bulletin</h1>{ps(12)}</body></html>", out, work)
    rows = "".join("<tr>" + "".join(f"<td>{rng.choice(WORDS)} {rng.randint(1, 99)}</td>" for _ in range(5)) + "</tr>"
                   for _ in range(60))
    chromium("chrome-tables", f"<html><body><h1>Freight Register</h1>{ps(2)}<table border=1>{rows}</table>{ps(2)}</body></html>",
             out, work)
    chromium("chrome-columns", f"<html><body style='column-count:2'><h1>Station Digest</h1>{ps(14)}</body></html>", out, work)
    chromium("chrome-letter", f"<html><body style='font-family:serif'><p>Dear customer,</p>{ps(5)}<p>Kind regards</p></body></html>",
             out, work)
    form = "".join(f"<p><label>{rng.choice(WORDS).capitalize()} <input value='{rng.choice(WORDS)}'></label></p>" for _ in range(8))
    chromium("chrome-form", f"<html><body><h1>Permit Application</h1>{ps(3)}<form>{form}</form>{ps(2)}</body></html>", out, work)


def fpdf_docs(rng, out):
    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("Helvetica", size=11)
    for _ in range(10):
        pdf.multi_cell(0, 6, paragraph(rng))
        pdf.ln(3)
    pdf.output(os.path.join(out, "fpdf-core-font.pdf"))
    pdf = FPDF()
    pdf.add_font("DejaVu", "", FONT)
    pdf.set_font("DejaVu", size=11)
    for _ in range(3):
        pdf.add_page()
        for _ in range(6):
            pdf.multi_cell(0, 6, paragraph(rng))
            pdf.ln(3)
    pdf.output(os.path.join(out, "fpdf-unicode.pdf"))
    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("Helvetica", size=10)
    pdf.multi_cell(0, 6, paragraph(rng, 2))
    with pdf.table() as table:
        for r in range(30):
            row = table.row()
            for _ in range(4):
                row.cell(f"{rng.choice(WORDS)} {rng.randint(1, 999)}")
    pdf.output(os.path.join(out, "fpdf-table.pdf"))


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "pdf-corpus"
    out = os.path.join(root, "pdfs")
    ref = os.path.join(root, "reference")
    os.makedirs(out, exist_ok=True)
    os.makedirs(ref, exist_ok=True)
    rng = random.Random(16)
    with tempfile.TemporaryDirectory() as work:
        writer_docs(rng, out, work)
        calc_docs(rng, out, work)
        impress_docs(rng, out, work)
        latex_docs(rng, out, work)
        chromium_docs(rng, out, work)
        fpdf_docs(rng, out)
    for name in sorted(os.listdir(out)):
        stem = name[:-4]
        run(["pdftotext", "-enc", "UTF-8", os.path.join(out, name), os.path.join(ref, stem + ".txt")])
    print(f"{len(os.listdir(out))} PDFs in {out}, references in {ref}")


if __name__ == "__main__":
    main()
