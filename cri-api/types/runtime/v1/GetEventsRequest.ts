// Original file: cri-api/api.proto


export interface GetEventsRequest {
}

export interface GetEventsRequest__Output {
}
