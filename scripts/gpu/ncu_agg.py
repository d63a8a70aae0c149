import csv,sys,collections
rows=list(csv.reader(open(sys.argv[1])))
# find header
hi=[i for i,r in enumerate(rows) if 'Kernel Name' in r][0]
h=rows[hi]; ki=h.index('Kernel Name'); mi=h.index('gpu__time_duration.sum')
agg=collections.defaultdict(lambda:[0,0.0])
for r in rows[hi+2:]:
    if len(r)<=mi: continue
    try: v=float(r[mi].replace(',',''))
    except: continue
    n=r[ki][:70]; agg[n][0]+=1; agg[n][1]+=v
tot=sum(v for c,v in agg.values())
for n,(c,v) in sorted(agg.items(), key=lambda x:-x[1][1])[:30]:
    print(f"{v/1e3:10.1f}us {c:6d} {v/c/1e3:8.2f}us/each  {n}")
print("total us", tot/1e3, "kernels", sum(c for c,v in agg.values()))
