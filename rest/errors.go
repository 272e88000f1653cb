package rest

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/iotkv/iotkv"
)

// WriteJSON answers v as JSON with status code.
func WriteJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// WriteError answers {"error":{"code","message"}} with status.
func WriteError(w http.ResponseWriter, status int, code, message string) {
	WriteJSON(w, status, map[string]iotkv.Error{"error": {Code: code, Message: message}})
}

// WriteErr maps err to a status: an *iotkv.Error by its code, anything else
// as a 500 whose detail is not shown.
func WriteErr(w http.ResponseWriter, err error) {
	var ie *iotkv.Error
	if !errors.As(err, &ie) {
		WriteError(w, http.StatusInternalServerError, iotkv.CodeInternal, "internal error")
		return
	}
	WriteError(w, statusOf(ie.Code), ie.Code, ie.Message)
}

func statusOf(code string) int {
	switch code {
	case iotkv.CodeNotFound:
		return http.StatusNotFound
	case iotkv.CodeTooLarge:
		return http.StatusRequestEntityTooLarge
	case iotkv.CodeNotAuthorized, iotkv.CodeQuotaExceeded:
		return http.StatusForbidden
	case iotkv.CodeUnauthenticated:
		return http.StatusUnauthorized
	case iotkv.CodeRateLimited:
		return http.StatusTooManyRequests
	case iotkv.CodeUnavailable:
		return http.StatusServiceUnavailable
	case iotkv.CodeInternal:
		return http.StatusInternalServerError
	}
	return http.StatusBadRequest
}
