-- Where a citation points when it is not a PDF page: "slide 3", "sheet Costs, rows 2–9".
ALTER TABLE chunks ADD COLUMN location TEXT;
-- Which extractor produced a document's text (a PDF's may come from a fallback or from OCR).
ALTER TABLE documents ADD COLUMN extractor TEXT;
