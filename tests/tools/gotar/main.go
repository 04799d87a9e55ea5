// gotar lists a tar archive read from stdin with Go's archive/tar, the reader behind Docker,
// containerd and most layer tools: one JSON object {"headers": [...], "error": "..."} on
// stdout.  Each header carries the fields a tree is made of and its content's sha256; the
// error is Next's or Read's, if any (the headers read before it are still listed).  Names,
// link names and PAX records are bytes, not text (JSON base64), so that names which are not
// UTF-8 arrive unchanged.  The tests use it as an oracle beside GNU tar
// (tests/test_tar_compat.py); it needs nothing but Go's standard library.
package main

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
)

type header struct {
	Name       []byte      `json:"name"`
	Linkname   []byte      `json:"linkname"`
	Typeflag   string      `json:"typeflag"` // the character whose code point is the byte
	Mode       int64       `json:"mode"`
	Uid        int         `json:"uid"`
	Gid        int         `json:"gid"`
	Uname      string      `json:"uname"`
	Gname      string      `json:"gname"`
	Size       int64       `json:"size"`
	MtimeNs    int64       `json:"mtime_ns"`
	Devmajor   int64       `json:"devmajor"`
	Devminor   int64       `json:"devminor"`
	PAXRecords [][2][]byte `json:"pax"`
	Sha256     string      `json:"sha256"`
	Read       int64       `json:"read"`
}

func main() {
	out := struct {
		Headers []header `json:"headers"`
		Error   *string  `json:"error"`
	}{Headers: []header{}}
	tr := tar.NewReader(os.Stdin)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			s := err.Error()
			out.Error = &s
			break
		}
		pax := [][2][]byte{}
		for k, v := range h.PAXRecords {
			pax = append(pax, [2][]byte{[]byte(k), []byte(v)})
		}
		sum := sha256.New()
		n, err := io.Copy(sum, tr)
		out.Headers = append(out.Headers, header{
			Name: []byte(h.Name), Linkname: []byte(h.Linkname), Typeflag: string(rune(h.Typeflag)),
			Mode: h.Mode, Uid: h.Uid, Gid: h.Gid, Uname: h.Uname, Gname: h.Gname,
			Size: h.Size, MtimeNs: h.ModTime.UnixNano(), Devmajor: h.Devmajor,
			Devminor: h.Devminor, PAXRecords: pax,
			Sha256: hex.EncodeToString(sum.Sum(nil)), Read: n,
		})
		if err != nil {
			s := err.Error()
			out.Error = &s
			break
		}
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(out); err != nil {
		os.Exit(2)
	}
}
